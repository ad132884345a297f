"""A reply survives its worker and its tracker: the job's next stream continues the same turn from the step the
tracker committed, with no token lost, repeated or left over from the broken attempt.

Real workers (in-process, the real engine), a real tracker process (killed, restarted and stalled by its pid) and a
real Redis. Greedy replies, so "continues" is checked token for token against the same reply uninterrupted.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from haloweave.tracker.v1 import tracker_pb2
from redis.asyncio import Redis

from devstack.procs import Proc, free_port, python_module, wait_until
from services.common import keys
from services.inference import batcher
from services.inference.affinity import alive_key
from services.inference.jobs import release_dead
from services.inference.worker import Worker

from .conftest import Chat, RunningWorker, grpc_serving, worker_settings

pytestmark = pytest.mark.slow

PROMPT = "Tell me a long story about a lighthouse keeper and his cat."
TOKENS = 48  # long enough that a reply struck at its 8th token is still running when its worker is gone


def reply_tokens(frames: list[dict[str, Any]]) -> list[int]:
    """The token ids of the session's last assistant turn, template markers included."""
    turn = [f["turn_id"] for f in frames if f["type"] == "done"][-1]
    return [f["token_id"] for f in frames if f["type"] == "token" and f["turn_id"] == turn]


def assistant_tokens_so_far(frames: list[dict[str, Any]]) -> int:
    return sum(1 for f in frames if f["type"] == "token" and f["role"] == "assistant")


async def assert_one_reply(chat: Chat, session_id: str, expected: list[int]) -> None:
    frames = await chat.events(session_id)
    types = [f["type"] for f in frames]
    assert types.count("done") == 1 and "error" not in types, types
    assert reply_tokens(frames) == expected
    export = await chat.tracker.Export(tracker_pb2.SessionRef(session_id=session_id))
    assert len({t.turn_id for t in export.tokens if t.role == "assistant"}) == 1  # one assistant turn, no fragment
    assert (await chat.redis.xpending(keys.JOBS_STREAM, keys.JOBS_GROUP))["pending"] == 0


async def reference(chat: Chat) -> list[int]:
    """The same reply, uninterrupted."""
    session = await chat.session(max_new_tokens=TOKENS)
    await chat.turn(session, PROMPT)
    return reply_tokens(await chat.events(session))


async def started(chat: Chat, tokens: int = 8) -> tuple[str, str]:
    """A session whose reply is under way: `tokens` of it (header included) are committed."""
    session = await chat.session(max_new_tokens=TOKENS)
    await chat.say(session, PROMPT)
    job_id = await chat.enqueue(session)
    await chat.wait_for(session, lambda fs: assistant_tokens_so_far(fs) >= tokens)
    return session, job_id


async def test_a_reply_continues_on_another_worker_when_its_worker_dies(
    chat: Chat, start_worker: Any, redis_url: str
) -> None:
    first = await start_worker("w-dies")
    expected = await reference(chat)
    session, job_id = await started(chat)
    # It dies: no Fail, no completion; its lock and its pending entry stay behind.
    await first.kill()
    # What the driver does when Ray reports the actor dead.
    released = await release_dead(chat.redis, "w-dies", first.worker.stats.incarnation, idle_ms=10_001)
    await chat.redis.delete(alive_key("w-dies"))
    await first.worker.close()
    assert released == 1
    await start_worker("w-takes-over")
    assert await chat.job_done(job_id) == "length"
    await assert_one_reply(chat, session, expected)


async def test_a_restarted_incarnation_takes_its_own_job_back_at_once(chat: Chat, start_worker: Any) -> None:
    """The same worker name restarted (as Ray restarts an actor): its dead incarnation's lock does not hold it up."""
    first = await start_worker("w-restarts", claim_idle_ms=60_000)
    expected = await reference(chat)
    session, job_id = await started(chat)
    await first.kill()
    await first.worker.close()
    await start_worker("w-restarts", claim_idle_ms=60_000)
    assert await asyncio.wait_for(chat.job_done(job_id), 60) == "length"  # far sooner than the 60 s claim time
    await assert_one_reply(chat, session, expected)


async def say_when_accepted(chat: Chat, session: str, text: str, timeout: float = 15.0) -> None:
    """As a client would: a message refused while the tracker still records the broken streams' ends is sent again."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        try:
            await chat.say(session, text)
            return
        except grpc.aio.AioRpcError as error:
            if error.code() != grpc.StatusCode.FAILED_PRECONDITION or asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.2)


class OwnTracker:
    """A tracker process on a fixed address, to kill, restart and stall by its pid."""

    def __init__(self, redis_url: str, logs: Path) -> None:
        self.address = f"127.0.0.1:{free_port()}"
        self.env = {
            "HALOWEAVE_REDIS_URL": redis_url,
            "HALOWEAVE_TRACKER_LISTEN": self.address,
            "HALOWEAVE_TRACKER_METRICS_PORT": "0",
        }
        self.logs = logs
        self.proc = self.start()

    def start(self) -> Proc:
        proc = Proc("tracker", python_module("services.tracker"), self.env, self.logs / "tracker.log")
        wait_until(lambda: grpc_serving(self.address), 60, "the tracker's health", proc)
        return proc

    def signal(self, sig: signal.Signals) -> None:
        os.kill(self.proc.popen.pid, sig)


@pytest.fixture
def own_tracker(redis_url: str, tmp_path: Path) -> Iterator[OwnTracker]:
    tracker = OwnTracker(redis_url, tmp_path)
    try:
        yield tracker
    finally:
        with contextlib.suppress(ProcessLookupError):
            tracker.signal(signal.SIGCONT)
        tracker.proc.stop()


@pytest.fixture
async def own_chat(redis_url: str, own_tracker: OwnTracker) -> Any:
    redis = Redis.from_url(redis_url)
    client = Chat(redis, own_tracker.address)
    yield client
    await client.close()
    await redis.aclose()


@pytest.fixture
async def own_worker(redis_url: str, own_tracker: OwnTracker, worker_engine: Any) -> Any:
    """A worker of the own tracker; a message it sends unanswered for 1 s counts as a broken stream."""
    handle = RunningWorker(Worker(worker_settings(redis_url, own_tracker.address, "w-own"), worker_engine))
    handle.worker.tracker.stream_timeout_s = 1.0
    yield handle
    if not handle.task.done():
        await handle.shutdown()


async def test_the_reply_continues_when_its_tracker_is_killed_and_restarted(
    own_chat: Chat, own_tracker: OwnTracker, own_worker: RunningWorker
) -> None:
    expected = await reference(own_chat)
    session, job_id = await started(own_chat)
    own_tracker.signal(signal.SIGKILL)
    own_tracker.proc.popen.wait()
    own_tracker.proc = await asyncio.to_thread(own_tracker.start)  # same address, same Redis
    assert await own_chat.job_done(job_id) == "length"
    await assert_one_reply(own_chat, session, expected)


async def test_a_stalled_tracker_is_waited_for_and_the_reply_finishes_after_it(
    own_chat: Chat, own_tracker: OwnTracker, own_worker: RunningWorker
) -> None:
    expected = await reference(own_chat)
    session, job_id = await started(own_chat)
    own_tracker.signal(signal.SIGSTOP)
    await asyncio.sleep(5)
    own_tracker.signal(signal.SIGCONT)
    assert await own_chat.job_done(job_id) == "length"
    await assert_one_reply(own_chat, session, expected)


async def test_a_tracker_stalled_past_the_deadline_fails_the_reply_clearly(
    own_chat: Chat, own_tracker: OwnTracker, own_worker: RunningWorker, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(batcher, "RESUME_DEADLINE_S", 2.0)
    session, job_id = await started(own_chat)
    own_tracker.signal(signal.SIGSTOP)
    try:
        assert await own_chat.job_done(job_id, timeout=60) == "error"  # while the tracker is still stopped
        frames = await own_chat.events(session)
        errors = [f for f in frames if f["type"] == "error"]
        assert [e["code"] for e in errors] == ["unavailable"] and "tracker" in errors[0]["message"]
        assert (await own_chat.redis.xpending(keys.JOBS_STREAM, keys.JOBS_GROUP))["pending"] == 0
    finally:
        own_tracker.signal(signal.SIGCONT)
    # Nothing is stuck: the session takes its next message (which closes the reply the tracker still held open, as
    # abandoned, naming the same job), and that reply completes.
    before = len(await own_chat.events(session))
    await say_when_accepted(own_chat, session, "Then say hello.")
    await own_chat.job_done(await own_chat.enqueue(session))
    frames = (await own_chat.events(session))[before:]
    assert [f["type"] for f in frames].count("done") == 1
    assert [(f["code"], f["job_id"]) for f in frames if f["type"] == "error"] == [("aborted", job_id)]
