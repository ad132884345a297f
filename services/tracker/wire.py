"""The commit path's own Redis connections: commands packed here, sent in one write, replies parsed by hiredis.

A step's commit is one round trip, and on a loopback connection redis-py's per-reply machinery (a timeout scope, a
stream read and a parser call per reply, several event-loop turns) cost as much again as the round trip itself
(measured: PING 145 µs through a redis-py connection, 67 µs through this one). Here the replies of a batch are
parsed from whatever bytes arrive, and the waiting caller is woken once, when the last one is complete.

Connecting is left to redis-py (TCP, unix sockets, TLS, AUTH, SELECT, as the client's URL says): once its handshake
is done, this module takes the transport over, and the redis-py connection object is not used again.

Taking the transport over reads two private attributes of redis-py's asyncio `Connection`, `_writer` (the
StreamWriter whose transport becomes the pipe's) and `_reader`, and clears both so that the connection lets go of the
socket (see `Pipe.open`). redis-py has no public way to hand over a connected socket, and the public alternative,
connecting here, would mean redoing its handshake for every kind of URL it accepts (TLS options, ACL users,
credential providers, RESP3, retries): more code to get wrong than two attribute names. Only `Pipe.open`, once per
connection, touches them; the per-step path is this module's own protocol either way. So pyproject.toml pins redis to
the major this is tested with, and tests/tracker/test_wire.py::test_redis_py_still_has_what_pipe_open_takes_over
fails, naming the attribute, if an upgrade moves or changes them.
"""

from __future__ import annotations

import asyncio
from typing import Any

import hiredis
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

# A piece of a packed command: a large value travels as a view of its array until the one join before the write.
Chunk = bytes | memoryview


def pack(*args: bytes | str | int) -> bytes:
    """A command in the Redis protocol (RESP): an array of bulk strings (hiredis packs it in C)."""
    return hiredis.pack_command(args)  # type: ignore[arg-type]  # its stub types the tuple as one element


def pack_set(key: bytes | str, value: Chunk) -> list[Chunk]:
    """SET key value, with the value framed in place instead of copied into the command (a step's live scores:
    up to 256 KiB at 32k tokens, and every copy of them is a pass over cold memory)."""
    name = key if isinstance(key, bytes) else key.encode()
    if isinstance(value, memoryview):
        value = value.cast("B")  # its length in bytes, whatever the array's item type
    return [b"*3\r\n$3\r\nSET\r\n$%d\r\n%b\r\n$%d\r\n" % (len(name), name, len(value)), value, b"\r\n"]


MULTI, EXEC = pack(b"MULTI"), pack(b"EXEC")


class Pipe(asyncio.Protocol):
    """One connection, one batch in flight. Error replies come back as ResponseError objects, in their place."""

    def __init__(self, timeout: float | None) -> None:
        self._reader = hiredis.Reader(replyError=ResponseError)
        self._transport: asyncio.Transport | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._timeout = timeout
        self._waiter: asyncio.Future[list[Any]] | None = None
        self._expected = 0
        self._replies: list[Any] = []

    @classmethod
    async def open(cls, redis: Redis) -> Pipe:
        pool = redis.connection_pool
        connection = pool.connection_class(**pool.connection_kwargs)
        await connection.connect()
        writer: asyncio.StreamWriter = connection._writer  # type: ignore[assignment]
        pipe = cls(pool.connection_kwargs.get("socket_timeout"))
        pipe._transport = writer.transport  # type: ignore[assignment]
        writer.transport.set_protocol(pipe)
        # Both the redis-py connection and the asyncio StreamWriter close the transport when they are collected (the
        # connection sits in a reference cycle, so that happens at a random moment): the connection lets go of the
        # writer, and the pipe keeps the writer alive as long as it lives.
        pipe._writer = writer
        connection._writer = connection._reader = None
        return pipe

    @property
    def usable(self) -> bool:
        return self._transport is not None and not self._transport.is_closing()

    async def exchange(self, payload: bytes, replies: int) -> list[Any]:
        """Sends packed commands and returns their `replies` replies. Any failure (a lost connection, a timeout, a
        cancelled caller) closes the pipe: a half-read batch must never meet the next one."""
        if self._waiter is not None:
            raise RuntimeError("a batch is already in flight on this connection")
        if not self.usable:
            raise RedisConnectionError("the connection is closed")
        loop = asyncio.get_running_loop()
        self._waiter, self._expected, self._replies = loop.create_future(), replies, []
        timer = None if self._timeout is None else loop.call_later(self._timeout, self._expire)
        try:
            self._transport.write(payload)  # type: ignore[union-attr]
            return await self._waiter
        except BaseException:
            self.close()
            raise
        finally:
            self._waiter = None
            if timer is not None:
                timer.cancel()

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None
        self._writer = None

    # ---- asyncio.Protocol ---------------------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        self._reader.feed(data)
        try:
            while (reply := self._reader.gets()) is not False:
                self._replies.append(reply)
        except hiredis.ProtocolError as exc:  # the stream cannot be trusted past this point
            self._fail(RedisConnectionError(f"unreadable reply from Redis: {exc}"))
            self.close()
            return
        waiter = self._waiter
        if waiter is not None and not waiter.done() and len(self._replies) >= self._expected:
            waiter.set_result(self._replies)

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = self._writer = None
        self._fail(RedisConnectionError(f"connection to Redis lost: {exc or 'closed by the server'}"))

    def _expire(self) -> None:
        self._fail(RedisTimeoutError(f"no reply from Redis within {self._timeout} s"))

    def _fail(self, error: Exception) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(error)
