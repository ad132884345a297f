"""Appending to and reading from a session's event Stream.

Every event gets an integer `event_id` from a per-session counter, and the Stream entry id is `<event_id>-0`, so the id
a browser sees is the Stream position: reconnecting with `last_event_id` is an `XRANGE (<id>-0 +`. The counter and the
XADD happen in one Lua script, so two writers (tracker replicas, a worker reporting a failure) can never interleave
out of order. Services that must make an event part of a larger atomic update embed `APPEND_EVENT_LUA` in their own
script.
"""

from __future__ import annotations

import json
from typing import Any

from redis.asyncio import Redis

from services.common import keys

# Bounded so that an abandoned session cannot grow without limit; the gateway replays from here.
MAX_EVENTS_PER_SESSION = 100_000

# KEYS[1] = events stream, KEYS[2] = counter; ARGV: maxlen, then (type, json data) pairs. Returns the last event id.
APPEND_EVENT_LUA = """
local id = 0
for i = 2, #ARGV, 2 do
  id = redis.call('INCR', KEYS[2])
  redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], id .. '-0', 'type', ARGV[i], 'data', ARGV[i + 1])
end
return id
"""


def encode(event_type: str, data: dict[str, Any]) -> list[str]:
    return [event_type, json.dumps(data, separators=(",", ":"))]


async def append_events(redis: Redis, session_id: str, events: list[tuple[str, dict[str, Any]]]) -> int:
    """Appends events atomically in order; returns the id of the last one."""
    argv: list[str | int] = [MAX_EVENTS_PER_SESSION]
    for event_type, data in events:
        argv.extend(encode(event_type, data))
    result = await redis.eval(  # type: ignore[misc]
        APPEND_EVENT_LUA, 2, keys.events_stream(session_id), keys.events_counter(session_id), *argv
    )
    return int(result)


async def append_event(redis: Redis, session_id: str, event_type: str, data: dict[str, Any]) -> int:
    return await append_events(redis, session_id, [(event_type, data)])


def decode(entry_id: bytes | str, fields: dict[Any, Any]) -> dict[str, Any]:
    """A Stream entry as the WebSocket frame the client sees: {"type", "event_id", ...data}."""
    entry = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    get = {(k.decode() if isinstance(k, bytes) else k): v for k, v in fields.items()}
    raw_type = get["type"]
    raw_data = get["data"]
    frame: dict[str, Any] = json.loads(raw_data)
    frame["type"] = raw_type.decode() if isinstance(raw_type, bytes) else raw_type
    frame["event_id"] = int(entry.split("-", 1)[0])
    return frame
