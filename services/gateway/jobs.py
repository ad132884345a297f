"""Jobs for the inference workers (XADD on the job Stream) and waiting for a job's answer on a session Stream."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

from redis.asyncio import Redis

from services.common import events, keys
from services.common.errors import HaloWeaveError, NotFound, Unavailable


class JobFailed(HaloWeaveError):
    """The worker answered a job with an `error` event; `code` is the event's code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


async def last_event_id(redis: Redis, session_id: str) -> int:
    """The id of the newest event of a session (0 when none): the point a reader starts from to see only new ones."""
    raw = await redis.get(keys.events_counter(session_id))
    return int(raw) if raw else 0


async def enqueue(redis: Redis, job_type: str, session_id: str, **extra: str) -> str:
    # A session being erased takes no new job. The check and the XADD are two commands (the job Stream and the
    # session's keys live in different cluster slots): a job added in between is still found by the erase, which
    # reads the job Streams only after setting the mark.
    if await redis.exists(keys.erasing_key(session_id)):
        raise NotFound(f"session {session_id} is being deleted")
    job_id = uuid.uuid4().hex
    fields = {
        "type": job_type,
        "session_id": session_id,
        "job_id": job_id,
        "enqueued_at": f"{time.time():.6f}",
        **extra,
    }
    await redis.xadd(keys.JOBS_STREAM, fields)  # type: ignore[arg-type]
    return job_id


async def wait_for_job(
    redis: Redis, session_id: str, job_id: str, after: int, answers: set[str], timeout: float
) -> dict[str, Any]:
    """Reads the session Stream after event `after` until an event of a type in `answers` (or `error`) names `job_id`.

    Start `after` from `last_event_id` taken *before* the job is enqueued, so a fast answer cannot be missed.
    """
    stream = keys.events_stream(session_id)
    cursor = f"{after}-0"
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise Unavailable(f"no answer to job {job_id} within {timeout:.0f} s (is a worker running?)")
        block_ms = max(1, int(min(left, 2.0) * 1000))  # under the client socket timeout
        reply: Any = await redis.xread({stream: cursor}, count=100, block=block_ms)
        for _stream, entries in reply or []:
            for entry_id, fields in entries:
                cursor = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
                frame = events.decode(entry_id, fields)
                if frame.get("job_id") != job_id:
                    continue
                if frame["type"] == "error":
                    raise JobFailed(str(frame.get("code", "internal")), str(frame.get("message", "job failed")))
                if frame["type"] in answers:
                    return frame
        await asyncio.sleep(0)
