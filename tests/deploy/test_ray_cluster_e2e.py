"""The inference topology of docker-compose.yml and the RayCluster, for real: a Ray head with no compute, a worker node
that joins it, and the inference service joining the cluster through RAY_ADDRESS (with the cluster's auth token), next
to the other services. The head has no CPUs, so the inference actor can only run on the worker node; a chat answered
end to end shows that the driver placed it there and that jobs reach it."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from devstack.stack import Stack
from tests.deploy.ray_cluster import RayCluster, ray_cluster
from tests.support.chat_client import ChatClient

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

# As in docker-compose.yml: the worker node has two CPUs, the driver asks for one actor using them.
WORKER_CPUS = 2


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RayCluster]:
    with ray_cluster(tmp_path_factory.mktemp("raycluster"), WORKER_CPUS) as running:
        yield running


@pytest.fixture(scope="module")
def clustered_stack(cluster: RayCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    env = {**cluster.env, "RAY_ADDRESS": cluster.address, "HALOWEAVE_RAY_NUM_CPUS": str(WORKER_CPUS)}
    with Stack(workdir=tmp_path_factory.mktemp("clustered"), env=env) as stack:
        yield stack


def test_a_chat_is_answered_by_an_actor_on_the_worker_node(clustered_stack: Stack) -> None:
    with ChatClient(clustered_stack.ws_url) as client:
        assert client.hello()["type"] == "session"
        client.send({"type": "settings", "settings": {"max_new_tokens": 4, "temperature": 0.0}})
        client.recv_until(lambda f: f["type"] in ("settings", "error"))
        frames = client.chat("Say hello.")
    assert frames[-1]["type"] == "done", frames[-3:]
    assert frames[-1]["stats"]["tokens"] >= 1
    metrics = httpx.get(clustered_stack.metrics_urls["inference"], timeout=10).text
    assert "haloweave_inference_workers_alive 1.0" in metrics
