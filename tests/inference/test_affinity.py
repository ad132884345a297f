"""Session affinity against a real Redis: ownership, forwarding to a live owner, takeover from a dead one, sweeping."""

from __future__ import annotations

import time

import pytest
from redis.asyncio import Redis

from services.common import keys
from services.inference.affinity import Affinity, alive_key
from services.inference.jobs import JobQueue, worker_stream


@pytest.fixture
async def redis(redis_url: str):
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()


async def worker(redis: Redis, name: str) -> tuple[JobQueue, Affinity]:
    queue = JobQueue(redis, name, claim_idle_ms=5000)
    await queue.ensure_groups()
    affinity = Affinity(redis, name, heartbeat_ttl_ms=5000)
    await affinity.heartbeat()
    return queue, affinity


async def enqueue(redis: Redis, session_id: str, job_id: str) -> None:
    fields = {"type": "generate", "session_id": session_id, "job_id": job_id, "enqueued_at": str(time.time())}
    await redis.xadd(keys.JOBS_STREAM, fields)  # type: ignore[arg-type]


async def test_first_taker_owns_and_later_jobs_follow_it(redis: Redis) -> None:
    qa, aa = await worker(redis, "a")
    qb, ab = await worker(redis, "b")
    await enqueue(redis, "s1", "j1")
    job = await qa.next(block_ms=100)
    assert job is not None and await aa.route(job) == "a"
    assert await aa.owner("s1") == "a"
    await qa.complete(job, "ok", [])

    await enqueue(redis, "s1", "j2")
    job = await qb.next(block_ms=100)  # b happens to read it from the shared Stream...
    assert job is not None and await ab.route(job) == "a"  # ...and forwards it to the owner
    assert (await redis.xpending(keys.JOBS_STREAM, keys.JOBS_GROUP))["pending"] == 0
    forwarded = await qa.next(block_ms=100)
    assert forwarded is not None
    assert forwarded.stream == worker_stream("a") and forwarded.job_id == "j2"
    assert await aa.route(forwarded) == "a"
    assert await qa.complete(forwarded, "ok", [])
    assert await redis.xlen(worker_stream("a")) == 0  # own-Stream entries are deleted once done


async def test_a_dead_owners_session_is_taken_over(redis: Redis) -> None:
    qa, aa = await worker(redis, "a")
    qb, ab = await worker(redis, "b")
    await enqueue(redis, "s1", "j1")
    job = await qa.next(block_ms=100)
    assert job is not None and await aa.route(job) == "a"
    await qa.complete(job, "ok", [])
    await redis.delete(alive_key("a"))  # a's heartbeat stopped
    await enqueue(redis, "s1", "j2")
    job = await qb.next(block_ms=100)
    assert job is not None and await ab.route(job) == "b"
    assert await ab.owner("s1") == "b"


async def test_jobs_forwarded_to_a_worker_that_died_go_back_to_the_shared_stream(redis: Redis) -> None:
    _, aa = await worker(redis, "a")
    qb, ab = await worker(redis, "b")
    await redis.set("hw:inf:owner:{s1}", "a")
    await enqueue(redis, "s1", "j1")
    job = await qb.next(block_ms=100)
    assert job is not None and await ab.route(job) == "a"
    assert await redis.xlen(worker_stream("a")) == 1
    assert await ab.sweep() == 0  # a is alive: its jobs stay with it
    await aa.retire()
    assert await ab.sweep() == 1
    assert await redis.xlen(worker_stream("a")) == 0
    again = await qb.next(block_ms=100)
    assert again is not None and again.job_id == "j1" and again.stream == keys.JOBS_STREAM
    assert await ab.route(again) == "b"


async def test_release_only_drops_our_own_ownership(redis: Redis) -> None:
    _, aa = await worker(redis, "a")
    await redis.set("hw:inf:owner:{s1}", "b")
    await aa.release("s1")
    assert await aa.owner("s1") == "b"
    await redis.set("hw:inf:owner:{s1}", "a")
    await aa.release("s1")
    assert await aa.owner("s1") is None


async def test_a_new_session_goes_to_the_least_loaded_worker(redis: Redis) -> None:
    qa, aa = await worker(redis, "a")
    _, ab = await worker(redis, "b")
    await aa.report_load(3)
    await ab.report_load(1)
    await enqueue(redis, "fresh", "j1")
    job = await qa.next(block_ms=100)  # a reads it, but b has less to do
    assert job is not None and await aa.route(job) == "b"
    assert await aa.owner("fresh") == "b"
    assert await redis.xlen(worker_stream("b")) == 1
    # Counted for b at once, so that the next new session in the same burst is weighed with it.
    assert await redis.hget("hw:inf:load", "b") == b"2"
    await aa.report_load(0)
    await enqueue(redis, "fresher", "j2")
    job = await qa.next(block_ms=100)
    assert job is not None and await aa.route(job) == "a"  # now a is the least loaded: it keeps it
