"""Conversations across stateless requests: which session a list of messages continues, and who owns it.

A client of this API sends the whole conversation every time. The gateway keeps, per API key, an index from the
digest of a message history (each message's role and text, as `turns` normalises them) to the session that holds
exactly that history, written when a reply completes with the reply's text as it was returned. A request whose
messages before the last are such a history continues that session: only the new message is appended, and the
session's pruned context is used as it is. Each session also records the digest of its current history
(`keys.openai_history`): the index entry is only believed when the session agrees, and while a reply is being made
the record is empty, so a second request cannot continue the same history at once, and a reply that failed leaves a
history that no request matches.

Keys (services/common/keys.py): `openai_owner` and `openai_history` are named after the session (its erase finds them
by its hash tag); each index entry `openai_conversation` is named in the session's registry Set in the same
transaction that writes it. `forget` removes all of them.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence

from redis.asyncio import Redis

from services.common import keys
from services.common.redis_text import text, text_or_none

Turn = tuple[str, str]  # (role, text)

# Sets the session's history record to "" (a reply is being made) when it still holds the expected digest.
_CLAIM = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], '')
  return 1
end
return 0
"""


def digest(turns: Sequence[Turn]) -> str:
    """The digest of a message history; the same on both sides because both are built by the same `turns`."""
    canonical = json.dumps([[role, content] for role, content in turns], ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8", "surrogatepass")).hexdigest()


async def owner(redis: Redis, session_id: str) -> str | None:
    """The id of the API key that created the session (None: not created through this API)."""
    return text_or_none(await redis.get(keys.openai_owner(session_id)))


async def adopt(redis: Redis, session_id: str, key_id: str) -> None:
    """A new session becomes the key's; its history is unknown ("") until its first reply completes."""
    async with redis.pipeline(transaction=True) as pipe:
        pipe.set(keys.openai_owner(session_id), key_id)
        pipe.set(keys.openai_history(session_id), "")
        await pipe.execute()


async def find(redis: Redis, key_id: str, history: Sequence[Turn]) -> str | None:
    """The session of this key whose history is exactly `history`, if the index has one."""
    return text_or_none(await redis.get(keys.openai_conversation(key_id, digest(history))))


async def claim(redis: Redis, session_id: str, history: Sequence[Turn]) -> bool:
    """Takes the session for one reply when its history is exactly `history`; False when it is not (or another
    request holds it)."""
    taken = await redis.eval(_CLAIM, 1, keys.openai_history(session_id), digest(history))  # type: ignore[misc]
    return bool(taken)


async def recorded(redis: Redis, session_id: str) -> str | None:
    """The digest of the session's history ("" while a reply is made or after one failed; None: no such record)."""
    return text_or_none(await redis.get(keys.openai_history(session_id)))


async def record(
    redis: Redis, key_id: str, session_id: str, history: Sequence[Turn], previous: Sequence[Turn] | None
) -> None:
    """After a reply: the session's history is `history` (ending with the reply as returned); the index entry of
    the history it continued (`previous`) is dropped, since the session has moved on from it."""
    entry = keys.openai_conversation(key_id, digest(history))
    registry = keys.session_registry(session_id)
    async with redis.pipeline(transaction=True) as pipe:
        if previous is not None:
            old = keys.openai_conversation(key_id, digest(previous))
            pipe.delete(old)
            pipe.srem(registry, old)
        pipe.set(entry, session_id)
        pipe.sadd(registry, entry)
        pipe.set(keys.openai_history(session_id), digest(history))
        await pipe.execute()


async def release(redis: Redis, key_id: str, session_id: str, previous: Sequence[Turn] | None) -> None:
    """After a reply that failed: the history is unknown, so the index entry that led here goes."""
    if previous is None:
        return
    old = keys.openai_conversation(key_id, digest(previous))
    async with redis.pipeline(transaction=True) as pipe:
        pipe.delete(old)
        pipe.srem(keys.session_registry(session_id), old)
        await pipe.execute()


async def forget(redis: Redis, session_id: str) -> None:
    """Removes everything this API keeps about a session: its owner, its history record and every index entry that
    points to it (named in the session's registry). The session's erase does the same through its registry and
    hash tag; this is for callers that erase only the API's view."""
    registry = keys.session_registry(session_id)
    members = await redis.smembers(registry)  # type: ignore[misc]
    entries = [entry for entry in map(text, members) if entry.startswith("hw:oai:conv:")]
    async with redis.pipeline(transaction=True) as pipe:
        pipe.delete(keys.openai_owner(session_id), keys.openai_history(session_id), *entries)
        if entries:
            pipe.srem(registry, *entries)
        await pipe.execute()
