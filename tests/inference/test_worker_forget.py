"""Forgetting a session (its erase): every worker that holds a cache of it drops it, a reply running for it is
cancelled and ends first, and no job entry, job record or inference key of the session is left in Redis."""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis

from services.common import keys
from services.inference.affinity import owner_key
from services.inference.engine import Engine
from services.inference.forget import forget_session
from services.inference.jobs import done_key
from tests.support import redis_traces

from .conftest import Chat


async def traces(redis: Redis, session_id: str) -> list[str]:
    # The tracker's keys are erased by Tracker.DeleteSession, not by the workers.
    return await redis_traces.traces(redis, session_id, skip_prefix=keys.session_prefix(session_id))


async def test_every_worker_forgets_the_session_after_its_running_reply_is_cancelled(
    chat: Chat, start_worker: Any, worker_engine: Engine
) -> None:
    workers = {name: await start_worker(name) for name in ("w-f1", "w-f2")}
    session = await chat.session(max_new_tokens=400)
    kept = await chat.session(max_new_tokens=2)
    assert (await chat.turn(kept, "Stay."))[-1]["type"] == "done"
    first = await chat.start_reply(session, "Tell me a long story about a lighthouse.")
    owner = (await chat.redis.get(owner_key(session))).decode()
    other = "w-f2" if owner == "w-f1" else "w-f1"
    # A stale copy, as a worker keeps one after another took the session over, until its budget lets it go.
    workers[other].worker.sessions.put(session, worker_engine.new_cache())
    assert await traces(chat.redis, session)

    forgets = {name: handle.worker.forget for name, handle in workers.items()}
    forgotten = await forget_session(chat.redis, session, forgets)

    by_worker = {f.worker_id: f for f in forgotten.workers}
    assert by_worker[owner].waited and by_worker[owner].cached and by_worker[owner].kv_bytes > 0
    assert by_worker[other].cached and not by_worker[other].waited
    assert forgotten.jobs_removed >= 1 and forgotten.keys_removed >= 1  # the entry; its done marker
    events = await chat.events(session)
    assert [e for e in events if e["type"] == "done"][-1]["stats"]["reason"] == "cancelled"
    for handle in workers.values():
        assert session not in handle.worker.sessions
    assert await chat.redis.get(done_key(first)) is None
    assert await traces(chat.redis, session) == []

    again = await forget_session(chat.redis, session, forgets)
    assert not any(f.cached or f.waited for f in again.workers) and again.jobs_removed == 0
    # The other session is untouched and still chats.
    assert await chat.redis.get(owner_key(kept)) is not None
    assert (await chat.turn(kept, "Still there?"))[-1]["type"] == "done"
