"""The gateway's Redis connections outlive a Redis restart: the first command on each dead pooled connection is sent
again on a new one instead of failing (which left a user message appended but never answered)."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError

from devstack.procs import free_port, start_redis
from services.gateway.app import reconnect


async def test_pooled_connections_come_back_after_redis_restarts(tmp_path: Path) -> None:
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    redis_proc = start_redis(tmp_path, port, tmp_path / "redis.log", appendonly=True)
    pool = aioredis.BlockingConnectionPool.from_url(url, max_connections=4, timeout=5, retry=reconnect())
    client, plain = aioredis.Redis.from_pool(pool), aioredis.Redis.from_url(url)
    try:
        await client.set("kept", "yes")
        await plain.ping()
        redis_proc.stop()
        redis_proc = start_redis(tmp_path, port, tmp_path / "redis.log", appendonly=True)
        with pytest.raises(RedisConnectionError):
            await plain.ping()  # without the retry: the dead connection's first command fails
        assert await client.get("kept") == b"yes"
    finally:
        await client.aclose()
        await plain.aclose()
        redis_proc.stop()
