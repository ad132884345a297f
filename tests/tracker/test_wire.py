"""The commit path's own Redis connections (services.tracker.wire), against the real Redis."""

from __future__ import annotations

import asyncio
import gc

import numpy as np
import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from services.tracker import wire


def test_pack_is_resp_bulk_strings() -> None:
    assert wire.pack(b"SET", "k", 12, b"\x00\r\n") == b"*4\r\n$3\r\nSET\r\n$1\r\nk\r\n$2\r\n12\r\n$3\r\n\x00\r\n\r\n"


def test_pack_set_frames_a_view_as_pack_frames_its_bytes() -> None:
    values = np.arange(5, dtype="<f8")
    assert b"".join(wire.pack_set("k", memoryview(values))) == wire.pack(b"SET", b"k", values.tobytes())
    assert b"".join(wire.pack_set(b"k", b"v")) == wire.pack(b"SET", b"k", b"v")


async def test_a_batch_returns_every_reply_in_order_with_errors_in_place(redis: Redis) -> None:
    pipe = await wire.Pipe.open(redis)
    try:
        batch = [wire.pack(b"SET", b"k", b"v"), wire.pack(b"INCR", b"k"), wire.pack(b"GET", b"k")]
        ok, error, value = await pipe.exchange(b"".join(batch), len(batch))
        assert ok == b"OK" and value == b"v"
        assert isinstance(error, ResponseError) and "not an integer" in str(error)
        assert pipe.usable  # an error reply is an answer, not a broken connection
    finally:
        pipe.close()


async def test_a_reply_larger_than_one_read_is_reassembled(redis: Redis) -> None:
    blob = bytes(range(256)) * 4096  # 1 MiB: many reads on the socket
    pipe = await wire.Pipe.open(redis)
    try:
        replies = await pipe.exchange(wire.pack(b"SET", b"big", blob) + wire.pack(b"GET", b"big"), 2)
        assert replies == [b"OK", blob]
    finally:
        pipe.close()


async def test_the_pipe_outlives_its_redis_py_handshake_objects(redis: Redis) -> None:
    # The redis-py connection that made the handshake, and its StreamWriter, close the transport when collected.
    pipe = await wire.Pipe.open(redis)
    try:
        gc.collect()
        await asyncio.sleep(0)
        assert pipe.usable
        assert await pipe.exchange(wire.pack(b"PING"), 1) == [b"PONG"]
    finally:
        pipe.close()


async def test_a_cancelled_exchange_closes_the_pipe(redis: Redis) -> None:
    pipe = await wire.Pipe.open(redis)
    task = asyncio.create_task(pipe.exchange(wire.pack(b"BLPOP", b"nothing", b"5"), 1))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not pipe.usable  # its late reply must never be read as the next batch's
    with pytest.raises(RedisConnectionError):
        await pipe.exchange(wire.pack(b"PING"), 1)


async def test_a_silent_server_times_out_and_closes_the_pipe(redis_url: str) -> None:
    client = Redis.from_url(redis_url, socket_timeout=0.1)
    pipe = await wire.Pipe.open(client)
    try:
        with pytest.raises(RedisTimeoutError):
            await pipe.exchange(wire.pack(b"BLPOP", b"nothing", b"5"), 1)
        assert not pipe.usable
    finally:
        pipe.close()
        await client.aclose()


async def test_a_connection_the_server_closes_fails_the_waiting_batch(redis: Redis) -> None:
    pipe = await wire.Pipe.open(redis)
    task = asyncio.create_task(pipe.exchange(wire.pack(b"BLPOP", b"nothing", b"5"), 1))
    await asyncio.sleep(0.05)
    await redis.client_kill_filter(_type="normal", skipme=True)
    with pytest.raises(RedisConnectionError, match="lost"):
        await task
    assert not pipe.usable


async def test_redis_py_still_has_what_pipe_open_takes_over(redis: Redis) -> None:
    """wire.Pipe.open relies on private attributes of redis-py's asyncio Connection (wire.py says why). An upgrade of
    redis that moves or changes them fails here, naming the attribute, instead of breaking the tracker's commits."""
    import redis as redis_py

    where = f"redis-py {redis_py.__version__} (services/tracker/wire.py, Pipe.open)"
    pool = redis.connection_pool
    for name in ("connection_class", "connection_kwargs"):
        assert hasattr(pool, name), f"{where}: ConnectionPool.{name} is gone"
    connection = pool.connection_class(**pool.connection_kwargs)
    await connection.connect()
    writer = getattr(connection, "_writer", None)
    reader = getattr(connection, "_reader", None)
    try:
        assert isinstance(writer, asyncio.StreamWriter), (
            f"{where}: Connection._writer is {writer!r} after connect(), not the asyncio.StreamWriter whose transport "
            "the pipe takes over"
        )
        assert isinstance(reader, asyncio.StreamReader), f"{where}: Connection._reader is {reader!r} after connect()"
        # The handshake's replies are all consumed: nothing the pipe would lose is left in redis-py's buffer.
        assert not getattr(reader, "_buffer", b""), f"{where}: Connection._reader holds bytes read past the handshake"
        assert connection.is_connected
        connection._writer = connection._reader = None  # what Pipe.open does to let go of the socket
        assert not connection.is_connected, (
            f"{where}: Connection no longer keeps its socket in _writer/_reader; clearing them does not detach it"
        )
        del connection
        gc.collect()
        await asyncio.sleep(0)
        assert not writer.transport.is_closing(), f"{where}: a detached Connection still closes its old transport"
    finally:
        writer.close()  # type: ignore[union-attr]
