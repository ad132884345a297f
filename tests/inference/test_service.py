"""`python -m services.inference` as a process: Ray with two worker actors, health, Status, metrics, SIGTERM."""

from __future__ import annotations

import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import psutil
import pytest
from haloweave.inference.v1 import inference_pb2, inference_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from devstack.procs import Proc, free_port, python_module, wait_until

from .conftest import Chat, grpc_serving

pytestmark = pytest.mark.slow


def metric_values(url: str) -> dict[str, float]:
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            values[sample.name] = values.get(sample.name, 0.0) + sample.value
    return values


@pytest.fixture(scope="module")
def inference(
    redis_server: tuple[Proc, str], tracker_addr: str, snapshot_addr: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Proc, str, str]]:
    root = Path(tmp_path_factory.mktemp("inference"))
    listen, metrics_port = f"127.0.0.1:{free_port()}", free_port()
    env = {
        "HALOWEAVE_REDIS_URL": redis_server[1],
        "HALOWEAVE_TRACKER_ADDR": tracker_addr,
        "HALOWEAVE_SNAPSHOT_ADDR": snapshot_addr,
        "HALOWEAVE_INFERENCE_LISTEN": listen,
        "HALOWEAVE_INFERENCE_METRICS_PORT": str(metrics_port),
        "HALOWEAVE_INFERENCE_WORKERS": "2",
        "HALOWEAVE_RAY_NUM_CPUS": "2",
        "HALOWEAVE_DEVICE": "cpu",
        # Deliberately long: the service must keep Ray's socket paths within the AF_UNIX limit itself.
        "RAY_TMPDIR": str(root / "ray-session-files"),
    }
    proc = Proc("inference", python_module("services.inference"), env, root / "inference.log")
    try:
        wait_until(lambda: grpc_serving(listen), 240, "the inference service's health", proc)
        yield proc, listen, f"http://127.0.0.1:{metrics_port}/metrics"
    finally:
        proc.stop(timeout=30)


async def test_the_service_serves_jobs_status_and_metrics_and_stops_on_sigterm(
    inference: tuple[Proc, str, str], chat: Chat
) -> None:
    proc, listen, metrics_url = inference

    def status() -> inference_pb2.StatusResponse:
        with grpc.insecure_channel(listen) as channel:
            return inference_pb2_grpc.InferenceStub(channel).Status(inference_pb2.StatusRequest(), timeout=5)

    # Serving starts with the first loaded worker; the second may still be loading on a busy machine.
    wait_until(lambda: all(w.alive for w in status().workers), 120, "both workers alive", proc)
    reply = status()
    assert reply.device == "cpu" and reply.dtype == "float32" and reply.tokenizer_fingerprint
    assert len(reply.workers) == 2
    # Each worker names its own process: an actor Ray started under this service.
    actors = {p.pid for p in psutil.Process(proc.pid).children(recursive=True)}
    assert {w.pid for w in reply.workers} <= actors and len({w.pid for w in reply.workers}) == 2

    session = await chat.session(max_new_tokens=3)
    frames = await chat.turn(session, "Hi!")
    assert frames[-1]["type"] == "done"
    wait_until(lambda: metric_values(metrics_url)["haloweave_inference_generated_tokens_total"] >= 1, 30, "metrics")
    values = metric_values(metrics_url)
    for name in (
        "haloweave_inference_time_to_first_token_seconds_count",
        "haloweave_inference_inter_token_latency_seconds_count",
        "haloweave_inference_queue_wait_seconds_count",
        "haloweave_inference_jobs_total",
        "haloweave_inference_offloads_total",
        "haloweave_inference_restores_total",
        "haloweave_inference_active_sessions",
        "haloweave_inference_kv_cache_bytes",
        "haloweave_jobs_stream_lag",
    ):
        assert name in values, name
    # The gauge is the driver's last poll of the actors; a poll that met the actor still busy with the reply (a
    # loaded machine) counts it as not answering, so wait for a poll after the reply.
    wait_until(
        lambda: metric_values(metrics_url)["haloweave_inference_workers_alive"] == 2, 30, "both workers polled", proc
    )
    assert values["haloweave_inference_time_to_first_token_seconds_count"] >= 1
    assert values["haloweave_inference_kv_cache_bytes"] > 0

    # A session's erase reaches every actor through the driver: the one holding the cache drops it.
    def forget() -> inference_pb2.ForgetSessionResponse:
        with grpc.insecure_channel(listen) as channel:
            stub = inference_pb2_grpc.InferenceStub(channel)
            return stub.ForgetSession(inference_pb2.ForgetSessionRequest(session_id=session), timeout=60)

    forgotten = forget()
    assert len(forgotten.workers) == 2 and [w.cached for w in forgotten.workers].count(True) == 1
    assert forgotten.jobs_removed == 1
    assert not any(w.cached for w in forget().workers)

    proc.stop(timeout=30)
    assert proc.popen.returncode == 0, proc.tail()


def test_a_missing_peer_stops_the_service_at_once_naming_the_variable(redis_url: str) -> None:
    env = {"HALOWEAVE_REDIS_URL": redis_url, "HALOWEAVE_TRACKER_ADDR": "", "HALOWEAVE_SNAPSHOT_ADDR": "127.0.0.1:1"}
    done = subprocess.run(
        [sys.executable, "-m", "services.inference"],
        env={**__import__("os").environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode != 0
    assert "HALOWEAVE_TRACKER_ADDR" in done.stderr
