"""Fixtures for the worker tests: the real engine (loaded once), a real tracker process, and a driver for chats.

The tests play the gateway's part themselves: they create sessions and append messages over the tracker's gRPC API,
XADD jobs to the Stream and read the session's event Stream, so each worker test runs the real chat-turn sequence.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from haloweave.tracker.v1 import tracker_pb2, tracker_pb2_grpc
from redis.asyncio import Redis

from devstack.procs import Proc, free_port, python_module, wait_until
from services.common import events, grpc_server, keys, settings_wire, tasks
from services.inference.engine import Engine, EngineConfig
from services.inference.jobs import done_key
from services.inference.scheduler import Limits
from services.inference.worker import Worker, WorkerSettings


def grpc_serving(address: str) -> bool:
    with grpc.insecure_channel(address) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1)
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


@pytest.fixture(scope="session")
def worker_engine() -> Engine:
    return Engine(EngineConfig(threads=2))


@pytest.fixture(scope="session")
def tracker_addr(redis_server: tuple[Proc, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real tracker process on the session's Redis."""
    logs = tmp_path_factory.mktemp("tracker")
    address = f"127.0.0.1:{free_port()}"
    env = {
        "HALOWEAVE_REDIS_URL": redis_server[1],
        "HALOWEAVE_TRACKER_LISTEN": address,
        "HALOWEAVE_TRACKER_METRICS_PORT": "0",
    }
    proc = Proc("tracker", python_module("services.tracker"), env, Path(logs) / "tracker.log")
    try:
        wait_until(lambda: grpc_serving(address), 60, "the tracker's health", proc)
        yield address
    finally:
        proc.stop()


@pytest.fixture(scope="session")
def snapshot_addr(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real snapshot service storing into a temporary directory."""
    root = tmp_path_factory.mktemp("snapshots")
    address = f"127.0.0.1:{free_port()}"
    env = {
        "HALOWEAVE_SNAPSHOT_URL": (root / "store").as_uri(),
        "HALOWEAVE_SNAPSHOT_LISTEN": address,
        "HALOWEAVE_SNAPSHOT_METRICS_PORT": "0",
        "HALOWEAVE_SNAPSHOT_MASTER_KEY": "11" * 32,
    }
    proc = Proc("snapshot", python_module("services.snapshot"), env, root / "snapshot.log")
    try:
        wait_until(lambda: grpc_serving(address), 60, "the snapshot service's health", proc)
        yield address
    finally:
        proc.stop()


class Chat:
    """The gateway's side of a chat turn, for tests: sessions, messages, jobs and the events they produce."""

    def __init__(self, redis: Redis, tracker_addr: str) -> None:
        self.redis = redis
        self.channel = grpc_server.channel(tracker_addr)
        self.tracker = tracker_pb2_grpc.TrackerStub(self.channel)

    async def close(self) -> None:
        await self.channel.close()

    async def session(self, **settings: Any) -> str:
        request = tracker_pb2.CreateSessionRequest(settings=settings_wire.to_pb(**settings))
        info = await self.tracker.CreateSession(request)
        return str(info.session_id)

    async def say(self, session_id: str, text: str) -> None:
        await self.tracker.AppendMessage(
            tracker_pb2.AppendMessageRequest(session_id=session_id, role="user", text=text)
        )

    async def enqueue(self, session_id: str, job_type: str = "generate", **extra: str) -> str:
        job_id = uuid.uuid4().hex
        fields = {
            "type": job_type,
            "session_id": session_id,
            "job_id": job_id,
            "enqueued_at": str(time.time()),
            **extra,
        }
        await self.redis.xadd(keys.JOBS_STREAM, fields)  # type: ignore[arg-type]
        return job_id

    async def events(self, session_id: str) -> list[dict[str, Any]]:
        entries = await self.redis.xrange(keys.events_stream(session_id))
        return [events.decode(entry_id, fields) for entry_id, fields in entries]

    async def wait_for(self, session_id: str, done: Any, timeout: float = 120.0) -> list[dict[str, Any]]:
        """The session's events once `done(events)` holds (polled; never a fixed sleep)."""
        deadline = time.monotonic() + timeout
        while True:
            frames = await self.events(session_id)
            if done(frames):
                return frames
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"events of {session_id} never satisfied the condition: {[f['type'] for f in frames]}"
                )
            await asyncio.sleep(0.05)

    async def start_reply(self, session_id: str, text: str) -> str:
        """Says `text` and enqueues a reply; returns its job id once the reply is under way (its first brightness)."""
        await self.say(session_id, text)
        job_id = await self.enqueue(session_id)
        await self.wait_for(session_id, lambda fs: any(f["type"] == "brightness" for f in fs))
        return job_id

    async def turn(self, session_id: str, text: str, timeout: float = 120.0) -> list[dict[str, Any]]:
        """Says `text`, enqueues a reply, returns the new events up to its `done` or `error`."""
        before = len(await self.events(session_id))
        await self.say(session_id, text)
        job_id = await self.enqueue(session_id)
        frames = await self.wait_for(
            session_id, lambda fs: any(f["type"] in ("done", "error") for f in fs[before:]), timeout
        )
        await self.job_done(job_id, timeout)
        return frames[before:]

    async def job_done(self, job_id: str, timeout: float = 120.0) -> str:
        """Waits for the worker to complete the job (it may still tidy its cache after the client saw `done`)."""
        deadline = time.monotonic() + timeout
        while (outcome := await self.redis.get(done_key(job_id))) is None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} was never completed")
            await asyncio.sleep(0.05)
        return str(outcome.decode())

    async def context(self, session_id: str) -> tracker_pb2.Context:
        return await self.tracker.GetContext(tracker_pb2.SessionRef(session_id=session_id))


@pytest.fixture
async def chat(redis_url: str, tracker_addr: str) -> AsyncIterator[Chat]:
    redis = Redis.from_url(redis_url)
    client = Chat(redis, tracker_addr)
    yield client
    await client.close()
    await redis.aclose()


class RunningWorker:
    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.stop = asyncio.Event()
        self.task = asyncio.create_task(worker.run(self.stop))

    async def kill(self) -> None:
        """As if its process died mid-job: its tasks end (cancelled again until they do: a cancellation can be lost
        in a library's time-out), no job is failed or completed, its lock and pending entries stay behind."""
        await tasks.end([self.task])

    async def shutdown(self) -> None:
        self.stop.set()
        await asyncio.wait_for(self.task, 60)
        await self.worker.close()


def worker_settings(redis_url: str, tracker_addr: str, name: str, **overrides: Any) -> WorkerSettings:
    values: dict[str, Any] = {
        "worker_id": name,
        "redis_url": redis_url,
        "tracker_addr": tracker_addr,
        # No snapshot service in these tests: a refused offload only drops a cache, which the tracker can rebuild.
        "snapshot_addr": overrides.pop("snapshot_addr", f"127.0.0.1:{free_port()}"),
        # Long enough that a busy machine never mistakes a slow heartbeat for a dead worker.
        "claim_idle_ms": 10_000,
    }
    bounds = {name: overrides.pop(name) for name in list(overrides) if name in Limits.__dataclass_fields__}
    values["limits"] = Limits(**{"kv_budget_bytes": 1 << 30, **bounds})
    values.update(overrides)
    return WorkerSettings(**values)


@pytest.fixture
async def start_worker(redis_url: str, tracker_addr: str, worker_engine: Engine) -> AsyncIterator[Any]:
    running: list[RunningWorker] = []

    async def start(name: str = "w-0", engine: Engine | None = None, **overrides: Any) -> RunningWorker:
        worker = Worker(worker_settings(redis_url, tracker_addr, name, **overrides), engine or worker_engine)
        handle = RunningWorker(worker)
        running.append(handle)
        return handle

    yield start
    for handle in running:
        if not handle.task.done():
            await handle.shutdown()
