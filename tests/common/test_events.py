"""The session event Stream's bounds (services.common.events), against a real Redis."""

from __future__ import annotations

import random
import time
from collections.abc import AsyncIterator

import orjson
import pytest
from redis.asyncio import Redis

from services.common import events, keys
from services.common.events import StreamLimits


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    try:
        yield client
    finally:
        await client.aclose()


def brightness(step: int, count: int = 512) -> str:
    """A brightness event's data at a full batch of `count` positions, as the tracker writes it (orjson floats)."""
    rng = random.Random(step)
    data = {
        "step": step,
        "turn_id": 7,
        "positions": list(range(10_000 + step, 10_000 + step + count)),
        "scores": [rng.random() * 3 for _ in range(count)],
    }
    return orjson.dumps(data).decode()


async def kept_ids(redis: Redis, session_id: str) -> list[int]:
    entries = await redis.xrange(keys.events_stream(session_id))
    return [events.entry_event_id(entry_id) for entry_id, _ in entries]


async def check_bookkeeping(redis: Redis, session_id: str) -> int:
    """The sizes list and the byte counter match the kept entries exactly; returns the counted bytes."""
    entries = await redis.xrange(keys.events_stream(session_id))
    sizes = [int(s) for s in await redis.lrange(keys.events_sizes(session_id), 0, -1)]  # type: ignore[misc]
    expected = [len(f[b"type"]) + len(f[b"data"]) + events.ENTRY_OVERHEAD_BYTES for _, f in entries]
    assert sizes == expected
    total = int(await redis.get(keys.events_bytes(session_id)) or 0)
    assert total == sum(expected)
    return total


async def test_a_hundred_thousand_brightness_events_stay_within_the_byte_budget(redis: Redis) -> None:
    bounds = StreamLimits()  # the defaults: 100 000 events, 8 MiB
    sid, batch, total = "big", 100, 100_000
    payloads = [brightness(step) for step in range(batch)]  # ~12 KB each; 1.2 GB in all, were nothing trimmed
    stream = keys.events_stream(sid)
    started, peak = time.perf_counter(), 0
    for first in range(0, total, batch):
        argv: list[str | int] = [bounds.max_events, bounds.max_bytes]
        for payload in payloads:
            argv.extend(("brightness", payload))
        last = await redis.eval(events.APPEND_EVENT_LUA, 4, *events.stream_keys(sid), *argv)  # type: ignore[misc]
        assert last == first + batch
        if first % 10_000 == 0:
            peak = max(peak, int(await redis.memory_usage(stream, samples=0) or 0))
    elapsed = time.perf_counter() - started
    ids = await kept_ids(redis, sid)
    counted = await check_bookkeeping(redis, sid)
    memory = int(await redis.memory_usage(stream, samples=0) or 0)
    sizes_memory = int(await redis.memory_usage(keys.events_sizes(sid), samples=0) or 0)
    print(
        f"\n100k brightness events ({len(payloads[0])} B each) in {elapsed:.1f} s: kept {len(ids)}, counted "
        f"{counted} B, stream MEMORY USAGE {memory} B (peak sampled {peak} B), sizes list {sizes_memory} B"
    )
    assert ids == list(range(total - len(ids) + 1, total + 1)), "the newest events, gap-free"
    assert counted <= bounds.max_bytes < counted + len(payloads[0]) + 100, "trimmed to the budget, no further"
    assert max(memory, peak) < 1.3 * bounds.max_bytes, "Redis' own memory for the Stream follows the budget"
    assert await redis.get(keys.events_counter(sid)) == str(total).encode()


async def test_the_count_bound_and_the_newest_event_over_the_budget(redis: Redis) -> None:
    small = StreamLimits(max_events=5, max_bytes=1 << 20)
    for step in range(12):
        await events.append_event(redis, "count", "token", {"position": step}, small)
    assert await kept_ids(redis, "count") == list(range(8, 13))
    await check_bookkeeping(redis, "count")

    tiny = StreamLimits(max_events=100, max_bytes=1000)
    await events.append_events(redis, "huge", [("token", {"p": i}) for i in range(3)], tiny)
    last = await events.append_event(redis, "huge", "attention", {"data": "x" * 5000}, tiny)
    assert await kept_ids(redis, "huge") == [last], "an event over the whole budget is kept alone, until the next"
    await events.append_event(redis, "huge", "token", {"p": 9}, tiny)
    assert await kept_ids(redis, "huge") == [last + 1]
    assert await check_bookkeeping(redis, "huge") <= tiny.max_bytes


async def test_a_stream_written_before_sizes_were_kept_is_brought_under_the_bounds(redis: Redis) -> None:
    stream = keys.events_stream("old")
    for event_id in range(1, 51):  # the layout before the byte bound: entries and a counter, nothing else
        await redis.xadd(stream, {"type": "token", "data": '{"position":1}'}, id=f"{event_id}-0")
    await redis.set(keys.events_counter("old"), 50)
    last = await events.append_event(redis, "old", "token", {"position": 2})
    assert last == 51
    # Their sizes were never counted, so the old entries go: the kept run is what the bookkeeping knows of.
    assert await kept_ids(redis, "old") == [51]
    await check_bookkeeping(redis, "old")


def test_limits_are_validated() -> None:
    with pytest.raises(SystemExit, match="HALOWEAVE_EVENT_STREAM_MAX_BYTES"):
        StreamLimits(max_bytes=0)
    with pytest.raises(SystemExit, match="HALOWEAVE_EVENT_STREAM_MAX_EVENTS"):
        StreamLimits(max_events=0)
