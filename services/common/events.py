"""Appending to and reading from a session's event Stream.

Every event gets an integer `event_id` from a per-session counter, and the Stream entry id is `<event_id>-0`, so the id
a browser sees is the Stream position: reconnecting with `last_event_id` is an `XRANGE (<id>-0 +`. The counter and the
XADD happen in one Lua script, so two writers (tracker replicas, a worker reporting a failure) can never interleave
out of order. Services that must make an event part of a larger atomic update define `APPEND_FUNCTION_LUA` in their
own script and call it.

The Stream is bounded in events and in bytes (`StreamLimits`). Each entry's size is pushed on a list beside it and
their sum kept in a counter, so the same script that appends also drops the oldest entries while the Stream is over
either bound: one round trip, and a cost that follows what is appended and dropped, never the Stream's length. What
stays is always a gap-free run of ids ending at the newest, and the newest event is kept even when it alone is over
the byte budget; a reader that finds the id after its cursor missing knows those events were trimmed.
"""

from __future__ import annotations

import functools
import json
from typing import Any

from pydantic import Field
from redis.asyncio import Redis

from services.common import config, keys

# Bounded so that an abandoned session cannot grow without limit; the gateway replays from here.
MAX_EVENTS_PER_SESSION = 100_000
MAX_BYTES_PER_SESSION = 8 * 1024 * 1024
# Added to each entry's type and data bytes for what Redis keeps beside them (the entry's id, header, field names):
# measured at about 35 bytes for a `token` event, and the allocator rounds larger entries up by 10-25% more.
ENTRY_OVERHEAD_BYTES = 64


class StreamLimits(config.EnvSettings):
    """How much of a session's event Stream is kept: the newest events within both bounds."""

    max_events: int = Field(
        default=MAX_EVENTS_PER_SESSION,
        validation_alias="HALOWEAVE_EVENT_STREAM_MAX_EVENTS",
        ge=1,
        description="Events kept in a session's Stream, at most (the oldest are trimmed). Give every service the same.",
    )
    max_bytes: int = Field(
        default=MAX_BYTES_PER_SESSION,
        validation_alias="HALOWEAVE_EVENT_STREAM_MAX_BYTES",
        ge=1,
        description=f"Bytes kept in a session's Stream, at most, counted as each event's type and JSON data plus"
        f" {ENTRY_OVERHEAD_BYTES}; the newest event stays even when alone over it. Give every service the same.",
    )

    @classmethod
    def from_env(cls) -> StreamLimits:
        return cls()


@functools.cache
def limits() -> StreamLimits:
    """The limits every writer of this process applies, read from the environment on first use (services call it at
    start-up, so a bad value stops them there). Every service must see the same values: each trims to its own."""
    return StreamLimits.from_env()


# A Lua function for scripts that append events: `append_events(keys, max_events, max_bytes, argv, first)` appends
# the (type, data) pairs of argv[first..] and returns the id of the last one (the current id when there are none).
# `keys` is {stream, counter, sizes, bytes}: the events_* keys of one session, in that order.
APPEND_FUNCTION_LUA = f"""
local function append_events(k, max_events, max_bytes, argv, first)
  local count = (#argv - first + 1) / 2
  if count < 1 then return tonumber(redis.call('GET', k[2]) or '0') end
  local last = redis.call('INCRBY', k[2], count)
  local id, sizes, added = last - count + 1, {{}}, 0
  for i = first, #argv, 2 do
    redis.call('XADD', k[1], id .. '-0', 'type', argv[i], 'data', argv[i + 1])
    local size = #argv[i] + #argv[i + 1] + {ENTRY_OVERHEAD_BYTES}
    sizes[#sizes + 1] = size
    added = added + size
    id = id + 1
  end
  local kept = 0
  for i = 1, #sizes, 1000 do
    kept = redis.call('RPUSH', k[3], unpack(sizes, i, math.min(i + 999, #sizes)))
  end
  local total
  if kept == #sizes then
    -- No sizes were kept before: a new Stream, or one written before they were; entries nobody counted go now.
    total = added
    redis.call('SET', k[4], total)
    if redis.call('XLEN', k[1]) > kept then redis.call('XTRIM', k[1], 'MINID', (last - kept + 1) .. '-0') end
  else
    total = redis.call('INCRBY', k[4], added)
  end
  if kept > max_events or total > max_bytes then
    while kept > 1 and (kept > max_events or total > max_bytes) do
      total = total - tonumber(redis.call('LPOP', k[3]))
      kept = kept - 1
    end
    redis.call('SET', k[4], total)
    redis.call('XTRIM', k[1], 'MINID', (last - kept + 1) .. '-0')
  end
  return last
end
"""

# KEYS: the four events_* keys of the session; ARGV: max events, max bytes, then (type, json data) pairs.
APPEND_EVENT_LUA = (
    APPEND_FUNCTION_LUA
    + """
return append_events(KEYS, tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV, 3)
"""
)


def stream_keys(session_id: str) -> list[str]:
    """The keys `APPEND_FUNCTION_LUA` takes, in its order."""
    return [
        keys.events_stream(session_id),
        keys.events_counter(session_id),
        keys.events_sizes(session_id),
        keys.events_bytes(session_id),
    ]


def encode(event_type: str, data: dict[str, Any]) -> list[str]:
    return [event_type, json.dumps(data, separators=(",", ":"))]


async def append_events(
    redis: Redis,
    session_id: str,
    events: list[tuple[str, dict[str, Any]]],
    stream_limits: StreamLimits | None = None,
) -> int:
    """Appends events atomically in order, trimming the oldest beyond the limits; returns the id of the last one."""
    bounds = stream_limits or limits()
    argv: list[str | int] = [bounds.max_events, bounds.max_bytes]
    for event_type, data in events:
        argv.extend(encode(event_type, data))
    result = await redis.eval(APPEND_EVENT_LUA, 4, *stream_keys(session_id), *argv)  # type: ignore[misc]
    return int(result)


async def append_event(
    redis: Redis,
    session_id: str,
    event_type: str,
    data: dict[str, Any],
    stream_limits: StreamLimits | None = None,
) -> int:
    return await append_events(redis, session_id, [(event_type, data)], stream_limits)


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


def entry_event_id(entry_id: bytes | str) -> int:
    """The event id of a Stream entry id (`<event_id>-0`)."""
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    return int(text.split("-", 1)[0])
