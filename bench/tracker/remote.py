"""The same step measured end to end through a real tracker process, and its Prometheus histogram read back."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import numpy as np
from haloweave.tracker.v1 import tracker_pb2 as pb
from haloweave.tracker.v1 import tracker_pb2_grpc

from bench.tracker.attention import AttentionModel
from bench.tracker.steps import next_context
from devstack.procs import Proc, free_port, python_module, wait_until
from services.common import settings_wire
from services.common.grpc_server import channel

HISTOGRAM = "haloweave_tracker_step_update_seconds"


def start_tracker(redis_url: str, log_dir: Path) -> tuple[Proc, str, int]:
    import asyncio

    from services.common.grpc_server import check_health

    address, metrics_port = f"127.0.0.1:{free_port()}", free_port()
    env = {
        "HALOWEAVE_REDIS_URL": redis_url,
        "HALOWEAVE_TRACKER_LISTEN": address,
        "HALOWEAVE_TRACKER_METRICS_PORT": str(metrics_port),
    }
    proc = Proc("tracker", python_module("services.tracker"), env, log_dir / "tracker.log")
    wait_until(lambda: asyncio.run(check_health(address)), 120, "tracker health", proc)
    return proc, address, metrics_port


async def drive(address: str, context: int, steps: int) -> list[float]:
    """Client round trips of `steps` reduced frames at about `context` active tokens."""
    async with channel(address) as ch:
        stub = tracker_pb2_grpc.TrackerStub(ch)
        sid = (await stub.CreateSession(pb.CreateSessionRequest())).session_id
        text = "The quick brown fox jumps over the lazy dog near the river bank today. " * max(1, context // 16)
        await stub.AppendMessage(pb.AppendMessageRequest(session_id=sid, role="user", text=text))
        await stub.AppendMessage(pb.AppendMessageRequest(session_id=sid, role="user", text="Go on."))
        call = stub.Generate()
        await call.write(pb.GenerateRequest(open=pb.Open(session_id=sid, job_id="bench")))
        positions = np.asarray((await call.read()).opened.context.positions, dtype=np.int64)
        await stub.UpdateSettings(
            pb.UpdateSettingsRequest(session_id=sid, settings=settings_wire.to_pb(max_context_tokens=len(positions)))
        )
        model = AttentionModel(1)
        samples = []
        for step in range(steps):
            request = pb.GenerateRequest(frame=pb.Frame(step=step, token_id=28, attention=model.row(positions)))
            started = time.perf_counter()
            await call.write(request)
            directive = (await call.read()).directive
            samples.append(time.perf_counter() - started)
            positions = next_context(positions, directive.position, list(directive.evict_positions))
        await call.write(pb.GenerateRequest(finish=pb.Finish(reason="length", tokens=steps)))
        await call.read()
        await call.done_writing()
    return samples


def scrape_histogram(metrics_port: int) -> tuple[list[tuple[float, float]], float, float]:
    """(le, cumulative count) buckets, sum and count of the step histogram."""
    text = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).text
    buckets: list[tuple[float, float]] = []
    total = count = 0.0
    for line in text.splitlines():
        if line.startswith(f"{HISTOGRAM}_bucket"):
            le = line.split('le="', 1)[1].split('"', 1)[0]
            buckets.append((float("inf") if le == "+Inf" else float(le), float(line.rsplit(" ", 1)[1])))
        elif line.startswith(f"{HISTOGRAM}_sum"):
            total = float(line.rsplit(" ", 1)[1])
        elif line.startswith(f"{HISTOGRAM}_count"):
            count = float(line.rsplit(" ", 1)[1])
    return buckets, total, count


def histogram_quantile(q: float, buckets: list[tuple[float, float]]) -> float:
    """Prometheus' histogram_quantile: linear interpolation inside the bucket that holds the rank."""
    total = buckets[-1][1]
    rank = q * total
    lower_bound, lower_count = 0.0, 0.0
    for bound, cumulative in buckets:
        if cumulative >= rank:
            if bound == float("inf"):
                return lower_bound
            share = (rank - lower_count) / max(cumulative - lower_count, 1e-12)
            return lower_bound + (bound - lower_bound) * share
        lower_bound, lower_count = bound, cumulative
    return lower_bound
