"""The Redis layout of a session, and the one atomic write every change goes through.

Under `hw:s:{<sid>}` (services.common.keys.session_prefix):

    :meta        hash: counters and flags (state.Meta), `settings` (JSON)
    :a:<name>    one binary string per per-token field (state.ARRAYS: little-endian numpy bytes, position order)
    :a:live      the scores of the active entries, in entry order: the one column every step rewrites
    :text        list: token text pieces, pushed once per entry, in position order
    :events      the session's event Stream (+ :event_seq, :event_sizes, :event_bytes), shared with the other services

A change is written by one Lua script (EVALSHA) that first checks the meta `version` it was computed from: a replica
with a stale cache gets CONFLICT, reloads and recomputes, so two replicas can serve one session and a crash can never
leave half a step. Arrays are appended to (fields written once), rewritten whole (the live scores) or overwritten at
a few entries (the deletion flags of a prune, and the final scores of the pruned entries); a large rewrite is SET on
a staging key in the same MULTI/EXEC and renamed into place by the script (or dropped on conflict).

Scores are split so that a step costs what the active context costs, however long the conversation has run: `:a:live`
holds the current scores of the active entries and is rewritten every step, while `:a:score` holds every entry's
score as of its last write (appended at creation, overwritten with the final score when the entry is pruned). Loading
puts the live scores over the active entries of `:a:score`. A session stored before `:a:live` existed has meta
`live_scores` 0: its `:a:score` is current, and its first commit writes `:a:live` whole.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import orjson
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from services.common import erasing, events, keys
from services.common.errors import DataLoss, NotFound
from services.common.redis_text import text
from services.tracker import wire
from services.tracker.settings import Settings
from services.tracker.state import ARRAYS, Draft, Meta, SessionState

CONFLICT = -1
# Script arguments are copied into and out of Lua: a large rewritten array (the scores, every step) is cheaper as a
# plain SET of a staging key that the script renames into place (measured: about half the time for 64 KiB).
STAGE_BYTES = 16 * 1024
# Events written by every step. Their payloads hold only validated finite numbers and strings, so orjson's output
# decodes to exactly what json.dumps would give; it is about ten times faster on a brightness batch of 512 positions
# and scores (measured ~35 µs vs ~380 µs), which was a third of a step's time at 8k tokens. Rarer events (settings,
# done, error: worker-supplied stats may hold non-finite floats) keep the shared encoder.
STEP_EVENTS = frozenset({"token", "brightness", "attention", "pruned"})

# KEYS: meta, the four event keys (events.stream_keys), text, one key per array (ARRAYS order), then one staging key
#       per array.
# ARGV: expected version, events max count, events max bytes, n meta pairs, pairs..., array writes spec, array writes
#       blob, text mode, n texts, texts..., then (type, data) event pairs (appended by events.APPEND_FUNCTION_LUA).
#       The spec lists `<array index><mode><bytes>` per write (e.g. `1a8 9r0`, or `8w16@4096` to overwrite 16 bytes
#       at byte 4096); the blob holds the bytes of the a/s/w writes one after another (one argument instead of three
#       per array). Modes: a append, s set, w overwrite at an offset (the entries a prune marks deleted), r rename the
#       array's staging key (written by a plain SET in the same MULTI) over it; text mode a or s.
# Returns the last event id, or -1 when the stored version is not the expected one (nothing is kept then).
COMMIT_LUA = (
    events.APPEND_FUNCTION_LUA
    + """
local arrays = (#KEYS - 6) / 2
local current = tonumber(redis.call('HGET', KEYS[1], 'version') or '0')
if current ~= tonumber(ARGV[1]) then
  for k = 7 + arrays, #KEYS do redis.call('DEL', KEYS[k]) end
  return -1
end
local i = 4
local pairs_n = tonumber(ARGV[i]); i = i + 1
if pairs_n > 0 then
  redis.call('HSET', KEYS[1], unpack(ARGV, i, i + 2 * pairs_n - 1)); i = i + 2 * pairs_n
end
local blob, offset = ARGV[i + 1], 1
for index, mode, size, at in string.gmatch(ARGV[i], '(%d+)(%a)(%d+)@?(%d*)') do
  index = tonumber(index)
  local key = KEYS[6 + index]
  if mode == 'r' then redis.call('RENAME', KEYS[6 + arrays + index], key)
  else
    local last = offset + tonumber(size)
    local part = string.sub(blob, offset, last - 1)
    offset = last
    if mode == 's' then redis.call('SET', key, part)
    elseif mode == 'w' then redis.call('SETRANGE', key, tonumber(at), part)
    else redis.call('APPEND', key, part) end
  end
end
i = i + 2
local text_mode = ARGV[i]; local texts = tonumber(ARGV[i + 1]); i = i + 2
if text_mode == 's' then redis.call('DEL', KEYS[6]) end
local first = i
while i < first + texts do
  local last = math.min(i + 999, first + texts - 1)
  redis.call('RPUSH', KEYS[6], unpack(ARGV, i, last))
  i = last + 1
end
return append_events({KEYS[2], KEYS[3], KEYS[4], KEYS[5]}, tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV, i)
"""
)


def meta_key(session_id: str) -> str:
    return f"{keys.session_prefix(session_id)}:meta"


def array_key(session_id: str, name: str) -> str:
    return f"{keys.session_prefix(session_id)}:a:{name}"


def text_key(session_id: str) -> str:
    return f"{keys.session_prefix(session_id)}:text"


def stage_key(session_id: str, name: str) -> str:
    return f"{keys.session_prefix(session_id)}:stage:{name}"


# The stored columns: the in-memory arrays, then the live scores.
LIVE = "live"
STORED = (*ARRAYS, LIVE)
_STORED_INDEX = {name: index for index, name in enumerate(STORED, start=1)}


@functools.lru_cache(maxsize=1024)
def _all_keys(session_id: str) -> tuple[bytes, ...]:
    """Built and encoded once per session: the commit of every step passes all 26 of them."""
    names = (
        meta_key(session_id),
        *events.stream_keys(session_id),
        text_key(session_id),
        *(array_key(session_id, name) for name in STORED),
        *(stage_key(session_id, name) for name in STORED),
    )
    return tuple(name.encode() for name in names)


class Store:
    def __init__(self, redis: Redis, stream_limits: events.StreamLimits | None = None) -> None:
        self.redis = redis
        self.stream_limits = stream_limits or events.limits()
        self._sha: str | None = None
        self._idle: list[wire.Pipe] = []

    async def exists(self, session_id: str) -> bool:
        return bool(await self.redis.exists(meta_key(session_id)))

    async def load(self, session_id: str) -> SessionState:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hgetall(meta_key(session_id))
            for name in STORED:
                pipe.get(array_key(session_id, name))
            replies = await pipe.execute()
        raw_meta = {text(k): text(v) for k, v in replies[0].items()}
        if not raw_meta:
            raise NotFound(f"unknown session {session_id!r}")
        settings = Settings.from_json(raw_meta.pop("settings"))
        arrays = {
            name: np.frombuffer(blob or b"", dtype=dtype).copy()
            for (name, dtype), blob in zip(ARRAYS.items(), replies[1 : 1 + len(ARRAYS)], strict=True)
        }
        meta = Meta.from_fields(raw_meta)
        state = SessionState(session_id, meta, settings, arrays)
        if meta.live_scores:
            live = np.frombuffer(replies[-1] or b"", dtype=ARRAYS["score"])
            active = state.active_index()
            if len(live) != len(active):  # commits are atomic: only a hand-edited or damaged key gets here
                raise DataLoss(
                    f"session {session_id!r}: {len(live)} live scores stored for {len(active)} active entries"
                )
            arrays["score"][active] = live
        return state

    async def delete(self, session_id: str) -> int:
        """Erases every key under the session's prefix (the layout above, staging keys included); returns how many."""
        return await erasing.unlink_matching(self.redis, keys.session_prefix_match(session_id))

    async def texts(self, session_id: str) -> list[str]:
        return [text(t) for t in await self.redis.lrange(text_key(session_id), 0, -1)]  # type: ignore[misc]

    async def commit(self, draft: Draft, replace: bool = False) -> int | None:
        """Writes the draft if the stored version is still the one it was computed from; None on conflict.

        `replace` rewrites every array and the text list (session restore). Returns the last event id.
        """
        state = draft.state
        state.meta.version = draft.base_version + 1
        # The live scores are rewritten whole when they all change (a step), when the set of active entries changes
        # (a prune), or when the stored session predates them; otherwise appended to.
        deletions = "deleted" in draft.patched or "deleted" in draft.rewritten
        live_whole = replace or deletions or "score" in draft.rewritten or not state.meta.live_scores
        state.meta.live_scores = 1
        # A new session (version 0) writes every field: its base meta already holds the model and fingerprint.
        fields = state.meta.to_fields(None if replace or draft.base_version == 0 else draft.base_meta)
        if draft.settings_changed or draft.base_version == 0 or replace:
            fields["settings"] = state.settings.to_json()
        bounds = self.stream_limits
        argv: list[Any] = [draft.base_version, bounds.max_events, bounds.max_bytes, len(fields)]
        for name, value in fields.items():
            argv.extend((name, value))
        spec: list[str] = []
        blobs: list[wire.Chunk] = []
        staged: list[tuple[str, wire.Chunk]] = []

        def write(name: str, mode: str, blob: wire.Chunk, offset: int = 0) -> None:
            index = _STORED_INDEX[name]
            if mode == "s" and len(blob) >= STAGE_BYTES:
                staged.append((stage_key(state.session_id, name), blob))
                spec.append(f"{index}r0")
                return
            spec.append(f"{index}{mode}{len(blob)}@{offset}" if mode == "w" else f"{index}{mode}{len(blob)}")
            blobs.append(blob)

        arrays = state.arrays
        pruned = draft.patched.get("deleted", ())
        for name in ARRAYS:
            values = arrays[name]
            # `score` is never rewritten whole by a step: its active part lives in :a:live.
            if replace or (name in draft.rewritten and name != "score"):
                write(name, "s", values.tobytes())
                continue
            if draft.appended:
                write(name, "a", values[len(values) - draft.appended :].tobytes())
            # A pruned entry's score is final: it goes to :a:score at the same entries as its deletion flag.
            for first, count in pruned if name == "score" else draft.patched.get(name, ()):
                write(name, "w", values[first : first + count].tobytes(), first * values.itemsize)
        if live_whole:
            live = arrays["score"][state.active_index()] if draft.live is None else draft.live
            write(LIVE, "s", memoryview(live).cast("B"))  # type: ignore[arg-type]  # framed from the array, not copied
        elif draft.appended:  # new entries are active: their scores join the live ones
            write(LIVE, "a", arrays["score"][len(arrays["score"]) - draft.appended :].tobytes())
        argv.extend((" ".join(spec), b"".join(blobs)))
        argv.extend(("s" if replace else "a", len(draft.texts), *draft.texts))
        for event_type, data in draft.events:
            argv.extend(_encode_event(event_type, data))
        result = await self._send_commit(staged, _all_keys(state.session_id), argv)
        if result == CONFLICT:
            state.meta.version = draft.base_version
            return None
        return result

    async def _send_commit(
        self, staged: list[tuple[str, wire.Chunk]], all_keys: tuple[bytes, ...], argv: list[Any]
    ) -> int:
        """One write, one round trip: EVALSHA, wrapped in MULTI/EXEC with the staged SETs when there are any (they
        and the script run together or not at all).

        The commands are packed here and sent by `_round_trip` (redis-py's pipeline machinery, per-argument encoding,
        a command stack and reply bookkeeping, cost about as much as the round trip itself). After a Redis restart
        the script is gone (NOSCRIPT): load it and try once more.
        """
        for attempt in (0, 1):
            if self._sha is None or attempt:
                self._sha = str(await self.redis.script_load(COMMIT_LUA))
            script = wire.pack(b"EVALSHA", self._sha, len(all_keys), *all_keys, *argv)
            if staged:
                chunks: list[wire.Chunk] = [wire.MULTI]
                for key, blob in staged:
                    chunks.extend(wire.pack_set(key, blob))
                chunks += (script, wire.EXEC)
                replies = await self._round_trip(chunks, len(staged) + 3)
                queued, outcome = replies[1:-1], replies[-1]
                failed = next((r for r in queued if isinstance(r, Exception)), None)
                if failed is None and isinstance(outcome, list):
                    failed = next((r for r in outcome if isinstance(r, Exception)), None)
                    if failed is None:
                        return int(outcome[-1])
                error = failed or ResponseError(f"transaction aborted: {outcome!r}")
            else:
                error = (await self._round_trip([script], 1))[0]
                if not isinstance(error, Exception):
                    return int(error)
            if not str(error).startswith("NOSCRIPT") or attempt:
                raise error
        raise AssertionError("unreachable")

    async def _round_trip(self, chunks: list[wire.Chunk], replies: int) -> list[Any]:
        """Sends packed commands (their bytes in `chunks`) in one write and returns their `replies` replies; error
        replies are returned, not raised. Commits use connections of their own (services.tracker.wire), one per
        commit in flight."""
        for retry in (False, True):
            reused = bool(self._idle) and not retry
            pipe = self._idle.pop() if reused else await wire.Pipe.open(self.redis)
            try:
                answers = await pipe.exchange(b"".join(chunks), replies)
            except RedisConnectionError:
                if not reused:
                    raise
                # An idle connection the server closed (say, Redis restarted): the others are as stale. A commit that
                # did reach Redis is never applied twice: its version check refuses the second copy.
                await self.aclose()
                continue
            self._idle.append(pipe)
            return answers
        raise AssertionError("unreachable")

    async def aclose(self) -> None:
        """Closes the commit connections (the client itself belongs to the caller)."""
        idle, self._idle = self._idle, []
        for pipe in idle:
            pipe.close()


def _encode_event(event_type: str, data: dict[str, Any]) -> list[Any]:
    if event_type in STEP_EVENTS:
        try:
            return [event_type, orjson.dumps(data)]
        except orjson.JSONEncodeError:  # e.g. a lone surrogate in a text piece: the shared encoder escapes it
            pass
    return events.encode(event_type, data)
