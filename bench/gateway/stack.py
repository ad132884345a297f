"""The real processes the benchmark needs: a private redis-server, the tracker (sessions) and the gateway."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from devstack.procs import Proc, free_port, python_module, start_redis, wait_until
from services.common.grpc_server import check_health


@dataclass
class Running:
    redis_url: str
    ws_url: str
    metrics_url: str


@contextlib.contextmanager
def running(workdir: Path) -> Iterator[Running]:
    procs: list[Proc] = []
    try:
        redis_port = free_port()
        procs.append(start_redis(workdir / "redis", redis_port, workdir / "redis.log"))
        redis_url = f"redis://127.0.0.1:{redis_port}/0"
        tracker = f"127.0.0.1:{free_port()}"
        env = {
            "HALOWEAVE_REDIS_URL": redis_url,
            "HALOWEAVE_TRACKER_LISTEN": tracker,
            "HALOWEAVE_TRACKER_METRICS_PORT": str(free_port()),
            "HALOWEAVE_LOG_LEVEL": "WARNING",
        }
        procs.append(Proc("tracker", python_module("services.tracker"), env, workdir / "tracker.log"))
        wait_until(lambda: asyncio.run(check_health(tracker)), 120, "tracker health", procs[-1])
        port = free_port()
        env = {
            "HALOWEAVE_REDIS_URL": redis_url,
            "HALOWEAVE_TRACKER_ADDR": tracker,
            # The benchmark measures relaying only: no snapshot service or workers are started.
            "HALOWEAVE_SNAPSHOT_ADDR": f"127.0.0.1:{free_port()}",
            "HALOWEAVE_INFERENCE_ADDR": f"127.0.0.1:{free_port()}",
            "HALOWEAVE_GATEWAY_PORT": str(port),
        }
        procs.append(Proc("gateway", python_module("services.gateway"), env, workdir / "gateway.log"))
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: httpx.get(f"{url}/healthz", timeout=2).status_code == 200, 60, "gateway", procs[-1])
        yield Running(redis_url, f"ws://127.0.0.1:{port}/v1/chat", f"{url}/metrics")
    finally:
        for proc in reversed(procs):
            proc.stop()
