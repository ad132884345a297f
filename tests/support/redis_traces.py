"""Finding what Redis still holds of a session: every key whose name, or any part of whose value, holds its id."""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis


async def _values(redis: Redis, key: bytes, kind: str) -> list[bytes]:
    if kind == "string":
        return [await redis.get(key) or b""]
    if kind == "hash":
        return [part for pair in (await redis.hgetall(key)).items() for part in pair]  # type: ignore[misc]
    if kind == "list":
        return list(await redis.lrange(key, 0, -1))  # type: ignore[misc]
    if kind == "set":
        return list(await redis.smembers(key))  # type: ignore[misc]
    if kind == "zset":
        return [member for member, _ in await redis.zrange(key, 0, -1, withscores=True)]
    if kind == "stream":
        entries: Any = await redis.xrange(key)
        return [part for entry_id, fields in entries for pair in fields.items() for part in (entry_id, *pair)]
    raise AssertionError(f"{key!r}: a {kind} is not looked into")


async def traces(redis: Redis, session_id: str, skip_prefix: str | None = None) -> list[str]:
    """The keys (all types: strings, hashes, lists, sets, sorted sets, Streams with their entries) whose name or
    value holds `session_id`; keys under `skip_prefix` are not looked at."""
    needle = session_id.encode()
    found = []
    async for key in redis.scan_iter(count=1000):
        name = key.decode(errors="replace")
        if skip_prefix is not None and name.startswith(skip_prefix):
            continue
        if needle in key:
            found.append(name)
            continue
        kind = (await redis.type(key)).decode()
        if kind == "none":  # gone since the scan saw it
            continue
        if any(needle in (v if isinstance(v, bytes) else str(v).encode()) for v in await _values(redis, key, kind)):
            found.append(f"{name} ({kind})")
    return found
