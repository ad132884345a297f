"""Erasing a session's Redis keys: the one way every service deletes what it holds of a session (by pattern, never by a
hand-kept list of names; services.common.keys says which patterns find them)."""

from __future__ import annotations

from collections.abc import AsyncIterator

from redis.asyncio import Redis

from services.common import keys

SCAN_COUNT = 1000


async def unlink_matching(redis: Redis, pattern: str) -> int:
    """UNLINKs every key that matches the SCAN pattern; returns how many were removed.

    SCAN may return a key twice and misses nothing that exists throughout; a key created while it runs may be missed,
    which is why each caller erases after the session's writers have been stopped."""
    removed = 0
    async for batch in _batches(redis, pattern):
        removed += int(await redis.unlink(*batch))
    return removed


async def _batches(redis: Redis, pattern: str) -> AsyncIterator[list[bytes]]:
    batch: list[bytes] = []
    async for key in redis.scan_iter(match=pattern, count=SCAN_COUNT):
        batch.append(key)
        if len(batch) >= SCAN_COUNT:
            yield batch
            batch = []
    if batch:
        yield batch


async def unlink_registered(redis: Redis, session_id: str) -> int:
    """UNLINKs the keys the session's registry names (keys.session_registry), then the registry itself."""
    registry = keys.session_registry(session_id)
    names = list(await redis.smembers(registry))  # type: ignore[misc]
    removed = int(await redis.unlink(*names)) if names else 0
    return removed + int(await redis.unlink(registry))
