"""Erasing what the inference service holds of a session (DELETE /v1/sessions/{id} → Inference.ForgetSession).

Every worker is told, not one consumer of the job group: a session's cache may sit on more than one worker (a worker
that lost the session to another keeps a stale copy until its budget lets it go), so the driver asks each of its
actors in turn (`Worker.forget`). The order keeps anything from coming back:

1. the session's job entries leave the shared Stream and every worker's own Stream (acked and deleted, pending or
   done), so no worker takes one of them up again;
2. every worker lets a job of the session that it is running end (its reply is cancelled through the tracker), then
   drops the KV cache and its cold tier;
3. entries that arrived meanwhile go the same way, then the job records (locks and done markers) of every job found
   and the service's keys named after the session (owner, offload: `keys.session_match`).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from services.common import erasing, keys
from services.common.redis_text import text
from services.inference.affinity import WORKERS_SET
from services.inference.jobs import done_key, lock_key, worker_stream

log = logging.getLogger(__name__)

PAGE = 1000
INFERENCE_PREFIX = "hw:inf:"


@dataclass(slots=True)
class Forgot:
    """What one worker let go of."""

    worker_id: str
    cached: bool = False
    kv_bytes: int = 0
    cold_bytes: int = 0
    waited: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "worker_id": self.worker_id,
            "cached": self.cached,
            "kv_bytes": self.kv_bytes,
            "cold_bytes": self.cold_bytes,
            "waited": self.waited,
        }


@dataclass(slots=True)
class Forgotten:
    workers: list[Forgot] = field(default_factory=list)
    jobs_removed: int = 0
    keys_removed: int = 0


async def job_streams(redis: Redis) -> list[str]:
    """The shared job Stream and the own Stream of every worker ever seen."""
    workers = sorted(text(w) for w in await redis.smembers(WORKERS_SET))  # type: ignore[misc]
    return [keys.JOBS_STREAM, *(worker_stream(w) for w in workers)]


async def remove_jobs(redis: Redis, session_id: str, streams: Iterable[str]) -> tuple[int, set[str]]:
    """Acks and deletes every entry of the session's jobs on these Streams; returns (entries removed, their job ids).

    The Streams are read whole, a page at a time: completed entries stay on the shared Stream, so this also finds the
    job ids of the session's past jobs, whose done markers are then erased too."""
    removed, job_ids = 0, set[str]()
    for stream in streams:
        start = "-"
        while True:
            page: Any = await redis.xrange(stream, start, "+", count=PAGE)
            mine = []
            for entry_id, raw in page:
                fields = {text(k): text(v) for k, v in (raw or {}).items()}
                if fields.get("session_id") == session_id:
                    mine.append(entry_id)
                    if fields.get("job_id"):
                        job_ids.add(fields["job_id"])
            if mine:
                with contextlib.suppress(ResponseError):  # a Stream without the group yet: nothing is pending
                    await redis.xack(stream, keys.JOBS_GROUP, *mine)
                removed += int(await redis.xdel(stream, *mine))
            if len(page) < PAGE:
                break
            start = "(" + text(page[-1][0])
    return removed, job_ids


async def forget_session(
    redis: Redis, session_id: str, workers: Mapping[str, Callable[[str], Awaitable[Forgot | None]]]
) -> Forgotten:
    """Erases the session from the job Streams, from every worker in `workers` (id → its forget; None: it holds
    nothing, e.g. it is dead and restarts empty) and from the service's Redis keys. A worker whose job of the session
    does not end in time raises (Unavailable): the erase can be run again."""
    result = Forgotten()
    removed, job_ids = await remove_jobs(redis, session_id, await job_streams(redis))
    for worker_id, forget in workers.items():
        forgot = await forget(session_id)
        result.workers.append(forgot if forgot is not None else Forgot(worker_id))
    late, more = await remove_jobs(redis, session_id, await job_streams(redis))
    result.jobs_removed = removed + late
    job_ids |= more
    records = [name for job_id in sorted(job_ids) for name in (done_key(job_id), lock_key(job_id))]
    for first in range(0, len(records), PAGE):
        result.keys_removed += int(await redis.unlink(*records[first : first + PAGE]))
    result.keys_removed += await erasing.unlink_matching(redis, INFERENCE_PREFIX + keys.session_match(session_id))
    log.info(
        "session %s forgotten: %d job entries, %d keys, caches on %s",
        session_id,
        result.jobs_removed,
        result.keys_removed,
        ", ".join(f.worker_id for f in result.workers if f.cached) or "no worker",
    )
    return result
