"""The job queue against a real Redis: delivery, locks, reclaiming from dead consumers, exactly-once completion."""

from __future__ import annotations

import time

import pytest
from redis.asyncio import Redis

from services.common import events, keys
from services.inference.jobs import BadJob, Job, JobQueue, done_key


async def enqueue(redis: Redis, job_type: str = "generate", session_id: str = "s1", job_id: str = "j1") -> str:
    fields = {"type": job_type, "session_id": session_id, "job_id": job_id, "enqueued_at": str(time.time())}
    return (await redis.xadd(keys.JOBS_STREAM, fields)).decode()  # type: ignore[arg-type]


async def session_events(redis: Redis, session_id: str) -> list[dict]:
    entries = await redis.xrange(keys.events_stream(session_id))
    return [events.decode(entry_id, fields) for entry_id, fields in entries]


@pytest.fixture
async def redis(redis_url: str):
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()


async def test_a_job_completes_exactly_once(redis: Redis) -> None:
    queue = JobQueue(redis, "w-a", claim_idle_ms=1000)
    await queue.ensure_groups()
    await enqueue(redis, "snapshot")
    job = await queue.next(block_ms=100)
    assert job is not None and job.type == "snapshot" and job.job_id == "j1"
    assert await queue.lock(job)
    saved = ("snapshot_saved", {"job_id": "j1", "snapshot_id": "m1d1x0x0x0", "tokens": 3, "bytes": 10})
    assert await queue.complete(job, "ok", [saved]) is True
    # A second completion (a re-delivery after a lost ack) changes nothing and appends nothing.
    assert await queue.complete(job, "ok", [saved]) is False
    assert await queue.is_done(job)
    assert (await redis.get(done_key("j1"))) == b"ok"
    frames = await session_events(redis, "s1")
    assert [f["type"] for f in frames] == ["snapshot_saved"]
    assert frames[0]["event_id"] == 1 and frames[0]["snapshot_id"] == "m1d1x0x0x0"
    pending = await redis.xpending(keys.JOBS_STREAM, keys.JOBS_GROUP)
    assert pending["pending"] == 0


async def test_completion_events_share_the_session_counter(redis: Redis) -> None:
    await events.append_event(redis, "s1", "token", {"position": 0})
    queue = JobQueue(redis, "w-a")
    await queue.ensure_groups()
    await enqueue(redis)
    job = await queue.next(block_ms=100)
    assert job is not None
    await queue.complete(job, "error", [("error", {"code": "not_found", "message": "x", "job_id": "j1"})])
    await events.append_event(redis, "s1", "token", {"position": 1})
    assert [f["event_id"] for f in await session_events(redis, "s1")] == [1, 2, 3]


async def test_completion_events_are_within_the_streams_bounds(redis: Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(events, "limits", lambda: events.StreamLimits(max_events=100, max_bytes=1024))
    await events.append_events(redis, "s1", [("token", {"position": p}) for p in range(20)])
    queue = JobQueue(redis, "w-a")
    await queue.ensure_groups()
    await enqueue(redis)
    job = await queue.next(block_ms=100)
    assert job is not None
    await queue.complete(job, "error", [("error", {"code": "internal", "message": "m" * 600, "job_id": "j1"})])
    frames = await session_events(redis, "s1")
    # The older events made room for the worker's: the kept ones are the newest, gap-free, and within the budget.
    assert frames[-1]["type"] == "error" and frames[-1]["event_id"] == 21
    assert [f["event_id"] for f in frames] == list(range(22 - len(frames), 22)) and len(frames) < 21
    assert int(await redis.get(keys.events_bytes("s1")) or 0) <= 1024


async def test_a_locked_job_is_not_run_twice(redis: Redis) -> None:
    first, second = JobQueue(redis, "w-a"), JobQueue(redis, "w-b")
    await first.ensure_groups()
    await enqueue(redis)
    job = await first.next(block_ms=100)
    assert job is not None
    assert await first.lock(job)
    assert not await second.lock(job)
    await first.complete(job, "ok", [])
    assert await second.lock(job)  # completion released it (and the done marker now guards it)


async def test_a_dead_consumers_job_is_reclaimed(redis: Redis) -> None:
    dead = JobQueue(redis, "w-dead", claim_idle_ms=1000)
    await dead.ensure_groups()
    await enqueue(redis)
    taken = await dead.next(block_ms=100)
    assert taken is not None  # taken and never acked: its worker died
    alive = JobQueue(redis, "w-alive", claim_idle_ms=1000)
    await alive.ensure_groups()
    deadline = time.monotonic() + 10
    job = None
    while job is None and time.monotonic() < deadline:
        job = await alive.next(block_ms=200)
    assert job is not None and job.entry_id == taken.entry_id and job.job_id == "j1"
    assert await alive.complete(job, "ok", [])


async def test_a_running_job_is_not_reclaimed_while_refreshed(redis: Redis) -> None:
    busy = JobQueue(redis, "w-busy", claim_idle_ms=1000)
    await busy.ensure_groups()
    await enqueue(redis)
    job = await busy.next(block_ms=100)
    assert job is not None
    other = JobQueue(redis, "w-other", claim_idle_ms=1000)
    await other.ensure_groups()
    # Refresh, then look: the entry's idle time is far below the threshold, so nothing is reclaimed.
    for _ in range(3):
        await busy.refresh(job)
        assert await other.next(block_ms=10) is None


async def test_a_restarted_worker_resumes_its_own_pending_job(redis: Redis) -> None:
    before = JobQueue(redis, "w-1")
    await before.ensure_groups()
    await enqueue(redis)
    job = await before.next(block_ms=100)
    assert job is not None
    after = JobQueue(redis, "w-1")  # the same name after a restart
    again = await after.next(block_ms=100)
    assert again is not None and again.entry_id == job.entry_id


def test_bad_jobs_are_named() -> None:
    with pytest.raises(BadJob, match="unknown job type"):
        Job("s", "1-0", {"type": "dance", "session_id": "s", "job_id": "j"}).validate()
    with pytest.raises(BadJob, match="session_id"):
        Job("s", "1-0", {"type": "generate", "job_id": "j"}).validate()
    with pytest.raises(BadJob, match="snapshot_id"):
        Job("s", "1-0", {"type": "restore", "session_id": "s", "job_id": "j"}).validate()
    Job("s", "1-0", {"type": "generate", "session_id": "s", "job_id": "j"}).validate()


def test_queue_wait() -> None:
    job = Job("s", "1-0", {"enqueued_at": "100.5"})
    assert job.queue_wait_s(now=101.0) == pytest.approx(0.5)
    assert Job("s", "1-0", {"enqueued_at": "soon"}).queue_wait_s() is None
