"""The Ray actor: killed mid-reply, Ray restarts it and the restarted incarnation continues the reply, once."""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Iterator

import pytest

from services.common import keys
from services.inference.actor import WorkerActor
from services.inference.driver import build_engine
from services.inference.engine import EngineConfig

from .conftest import Chat, worker_settings

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[None]:
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()


def wait_ready(actor, timeout: float = 120.0) -> dict:
    import ray

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if ray.get(actor.ready.remote(), timeout=10):
                return ray.get(actor.info.remote(), timeout=10)
        except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
            pass  # being restarted
        time.sleep(0.2)
    raise TimeoutError("the actor never became ready")


async def test_a_killed_actor_is_restarted_and_its_job_completed_once(
    ray_cluster: None, chat: Chat, redis_url: str, tracker_addr: str
) -> None:
    import ray

    settings = worker_settings(redis_url, tracker_addr, "w-ray", claim_idle_ms=2000)
    factory = functools.partial(build_engine, EngineConfig(threads=1))
    actor = ray.remote(WorkerActor).options(num_cpus=0.5, max_restarts=-1).remote(settings, factory)
    try:
        before = wait_ready(actor)
        session = await chat.session(max_new_tokens=24)
        # Mid-reply: the first reply tokens are out, the job is pending on the actor.
        job_id = await chat.start_reply(session, "Tell me a long story about a lighthouse keeper.")
        ray.kill(actor, no_restart=False)

        outcome = await chat.job_done(job_id, timeout=240)
        assert outcome in ("eos", "length")
        after = wait_ready(actor)
        assert after["stats"]["incarnation"] != before["stats"]["incarnation"]
        frames = await chat.events(session)
        types = [f["type"] for f in frames]
        # The restarted incarnation continued the reply: one turn, one done, nothing aborted.
        assert types.count("done") == 1 and "error" not in types
        assert len({f["turn_id"] for f in frames if f["type"] == "token" and f["role"] == "assistant"}) == 1
        assert (await chat.redis.xpending(keys.JOBS_STREAM, keys.JOBS_GROUP))["pending"] == 0
        assert after["stats"]["jobs_done"] == 1
    finally:
        ray.kill(actor, no_restart=True)
