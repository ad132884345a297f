"""Relaying one session's event Stream to one connection: XREAD from the last delivered id into a bounded outbox.

Stream entry ids are `<event_id>-0`, so reading after the client's `last_event_id` replays exactly what it missed and
then follows live events, in order, each once. The outbox is bounded in frames and in bytes: when a client stops
reading and the outbox stays full for `stall_timeout`, the reader reports an overflow and the connection is closed
(`slow_consumer`). Generation never waits on any client, since writers append to Redis and each connection has its own
reader.

The Stream keeps a gap-free run of ids (services.common.events), so an entry whose id is not the one after the cursor
means the events between were trimmed before this reader got to them: the client is told so in place, with a
`replay_truncated` error frame whose id is the last one trimmed, and the relay goes on.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from services.common import events, keys
from services.common.redis_text import text

READ_COUNT = 256
# Below the Redis client's socket timeout (5 s by default), so a quiet session never looks like a dead server.
READ_BLOCK_MS = 2_000


@dataclass(slots=True)
class Outgoing:
    text: str
    type: str
    read_at: float | None  # monotonic time the event was read off the Stream; None for frames made here


def encode(frame: dict[str, Any]) -> str:
    return json.dumps(frame, separators=(",", ":"), ensure_ascii=False)


class Overflow(Exception):
    """The connection's outbox is full: its client is not reading fast enough."""


# The error code of a frame that stands for events trimmed before they could be relayed (also the `session` frame's
# `replay_truncated` flag): the client's view is incomplete and is rebuilt from `GET /v1/sessions/{id}/export`.
REPLAY_TRUNCATED = "replay_truncated"


class Outbox:
    """The frames waiting for one socket, bounded in count and in bytes (the length of their text).

    An empty outbox takes one frame of any size, so a frame larger than the byte bound waits its turn, never refused.
    One consumer (the connection's sender); producers are the Stream reader and frames made by the connection.
    """

    def __init__(self, max_frames: int, max_bytes: int) -> None:
        self.max_frames = max_frames
        self.max_bytes = max_bytes
        self.bytes = 0
        self._items: deque[Outgoing] = deque()
        self._filled = asyncio.Event()
        self._drained = asyncio.Event()

    def __len__(self) -> int:
        return len(self._items)

    def fits(self, item: Outgoing) -> bool:
        if not self._items:
            return True
        return len(self._items) < self.max_frames and self.bytes + len(item.text) <= self.max_bytes

    def put_nowait(self, item: Outgoing) -> None:
        if not self.fits(item):
            raise asyncio.QueueFull
        self._items.append(item)
        self.bytes += len(item.text)
        self._filled.set()

    async def put(self, item: Outgoing) -> None:
        while not self.fits(item):
            self._drained.clear()
            await self._drained.wait()
        self.put_nowait(item)

    def get_nowait(self) -> Outgoing:
        if not self._items:
            raise asyncio.QueueEmpty
        item = self._items.popleft()
        self.bytes -= len(item.text)
        self._drained.set()
        return item

    async def get(self) -> Outgoing:
        while not self._items:
            self._filled.clear()
            await self._filled.wait()
        return self.get_nowait()

    def describe(self) -> str:
        return f"{len(self._items)} frames ({self.bytes} bytes)"


class StreamReader:
    """Follows one session Stream for one connection.

    `on_event` sees every session-wide frame before it is queued (the connection tracks whether a reply is running).
    Error events addressed to another connection (field `connection`) are skipped: they belong to that socket.
    """

    def __init__(
        self,
        redis: Redis,
        session_id: str,
        after: int,
        connection_id: str,
        outbox: Outbox,
        on_event: Callable[[dict[str, Any]], None],
        stall_timeout: float,
        truncated: bool = False,
    ) -> None:
        self.redis = redis
        self.stream = keys.events_stream(session_id)
        self.cursor = f"{after}-0"
        # The id the next entry must have, or None when a gap before it is already known to the client (the session
        # frame said `replay_truncated`).
        self.expected: int | None = None if truncated else after + 1
        self.connection_id = connection_id
        self.outbox = outbox
        self.on_event = on_event
        self.stall_timeout = stall_timeout

    async def run(self) -> None:
        """Runs until cancelled; raises `Overflow` when the outbox is full."""
        while True:
            count = min(READ_COUNT, self.outbox.max_frames)
            reply: Any = await self.redis.xread({self.stream: self.cursor}, count=count, block=READ_BLOCK_MS)
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                # The Redis client can absorb a cancellation that lands inside a blocking read; honour it here, or
                # a connection that is closing would go on reading and end up reported as a slow consumer.
                raise asyncio.CancelledError
            read_at = time.monotonic()
            for _stream, entries in reply or []:
                for entry_id, fields in entries:
                    self.cursor = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
                    event_id = events.entry_event_id(self.cursor)
                    if self.expected is not None and event_id > self.expected:
                        await self._put(self._trimmed(self.expected, event_id - 1))
                    self.expected = event_id + 1
                    item = self._outgoing(self.cursor, fields, read_at)
                    if item is not None:
                        await self._put(item)

    def _outgoing(self, entry_id: str, fields: dict[Any, Any], read_at: float) -> Outgoing | None:
        """The frame for one Stream entry, or None when it is addressed to another connection."""
        kind = text(fields.get(b"type", fields.get("type", "")))
        data = text(fields.get(b"data", fields.get("data", "{}")))
        if kind != "error" and data.startswith("{") and '"type"' not in data and '"event_id"' not in data:
            # The hot path (token, brightness, ...): splice the stored JSON object into the frame instead of
            # parsing and re-serialising it; the gateway relays these events unchanged.
            event_id = int(entry_id.split("-", 1)[0])
            rest = data[1:] if data != "{}" else "}"
            head = f'{{"type":{json.dumps(kind)},"event_id":{event_id}'
            self.on_event({"type": kind})
            return Outgoing(f"{head},{rest}" if rest != "}" else f"{head}}}", kind, read_at)
        frame = events.decode(entry_id, fields)
        owner = frame.pop("connection", None)
        if owner is not None and owner != self.connection_id:
            return None
        if owner is None:
            self.on_event(frame)
        return Outgoing(encode(frame), frame["type"], read_at)

    @staticmethod
    def _trimmed(first: int, last: int) -> Outgoing:
        frame = {
            "type": "error",
            "event_id": last,
            "code": REPLAY_TRUNCATED,
            "message": f"events {first}..{last} were trimmed before they could be relayed; "
            "GET /v1/sessions/{id}/export has the current state",
        }
        return Outgoing(encode(frame), "error", None)

    async def _put(self, item: Outgoing) -> None:
        try:
            self.outbox.put_nowait(item)
        except asyncio.QueueFull:
            # A burst may fill the outbox of a healthy client for a moment; only one that makes no room for a while
            # is slow. Waiting here holds back only this connection's reader.
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow the cancellation of a closing
            # connection and report a stall instead.
            try:
                async with asyncio.timeout(self.stall_timeout):
                    await self.outbox.put(item)
            except TimeoutError:
                raise Overflow(
                    f"{self.outbox.describe()} waited for this client for more than {self.stall_timeout:g} s"
                ) from None


async def oldest_event_id(redis: Redis, session_id: str) -> int | None:
    """The id of the oldest event still kept (the Stream is trimmed), or None when it is empty."""
    entries = await redis.xrange(keys.events_stream(session_id), count=1)
    if not entries or entries[0][0] is None:
        return None
    return events.entry_event_id(entries[0][0])
