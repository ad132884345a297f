"""Taking jobs from Redis: the shared job Stream, this worker's own Stream, reclaiming, exactly-once completion.

Every worker is a consumer named after itself in the group `workers` of two Streams: the shared `hw:jobs` and its own
`hw:inf:w:{worker}:jobs`, where other workers forward the jobs of sessions it holds (see `affinity`).

Exactly once:
- a job is worked on only under its lock (`hw:inf:job:{job_id}` = `<worker>/<incarnation>`, with a time-out that the
  worker refreshes while it runs), so a job reclaimed from a slow-but-alive worker is never run twice at the same
  time. A worker restarted under the same name takes over the locks of its dead incarnation at once, and the driver,
  told by Ray that an actor died, releases them for the other workers (`release_dead`) without waiting for time-outs;
- a job is completed by one Lua script that sets its done marker, appends the worker's own events (if any) and acks;
  a job whose done marker exists is acked and skipped, so a re-delivery after a crash between the completion and the
  ack does nothing;
- the pending entries of a dead consumer (not refreshed for `claim_idle_ms`) are taken over with XAUTOCLAIM; a worker
  restarted by Ray under the same name first reads back its own pending entries.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from services.common import events, keys
from services.common.redis_text import text

log = logging.getLogger(__name__)

JOB_TYPES = ("generate", "snapshot", "restore")
DONE_TTL_S = 7 * 24 * 3600


def worker_stream(worker_id: str) -> str:
    return f"hw:inf:w:{worker_id}:jobs"


def done_key(job_id: str) -> str:
    return f"hw:inf:done:{job_id}"


def lock_key(job_id: str) -> str:
    return f"hw:inf:job:{job_id}"


class BadJob(ValueError):
    """A Stream entry that is not a valid job; it is acked with an error event and never retried."""


@dataclass(slots=True)
class Job:
    stream: str
    entry_id: str
    fields: dict[str, str] = field(default_factory=dict)

    @property
    def type(self) -> str:
        return self.fields.get("type", "")

    @property
    def session_id(self) -> str:
        return self.fields.get("session_id", "")

    @property
    def job_id(self) -> str:
        # An entry without a job id still needs a stable name for its lock and marker: its Stream position.
        return self.fields.get("job_id") or f"entry-{self.stream}-{self.entry_id}"

    @property
    def snapshot_id(self) -> str:
        return self.fields.get("snapshot_id", "")

    def queue_wait_s(self, now: float | None = None) -> float | None:
        raw = self.fields.get("enqueued_at")
        try:
            enqueued = float(raw) if raw else None
        except ValueError:
            return None
        if enqueued is None:
            return None
        return max(0.0, (now if now is not None else time.time()) - enqueued)

    def validate(self) -> None:
        if self.type not in JOB_TYPES:
            raise BadJob(f"unknown job type {self.type!r} (expected one of {', '.join(JOB_TYPES)})")
        if not self.session_id:
            raise BadJob("job has no session_id")
        if not self.fields.get("job_id"):
            raise BadJob("job has no job_id")
        if self.type == "restore" and not self.snapshot_id:
            raise BadJob("restore job has no snapshot_id")


def _job(stream: Any, entry_id: Any, fields: Any) -> Job:
    return Job(text(stream), text(entry_id), {text(k): text(v) for k, v in (fields or {}).items()})


# KEYS: stream, done, lock, then the session's four event keys (events.stream_keys). ARGV: group, entry id, outcome,
# ttl, delete (0/1), events max count, events max bytes, then (type, data) pairs of events to append (by
# services.common.events.APPEND_FUNCTION_LUA). Returns 1 when this call completed the job, 0 when it was done already.
COMPLETE_LUA = (
    events.APPEND_FUNCTION_LUA
    + """
local first = redis.call('SET', KEYS[2], ARGV[3], 'NX', 'EX', ARGV[4])
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
if ARGV[5] == '1' then redis.call('XDEL', KEYS[1], ARGV[2]) end
redis.call('DEL', KEYS[3])
if not first then return 0 end
if #ARGV > 7 then
  append_events({KEYS[4], KEYS[5], KEYS[6], KEYS[7]}, tonumber(ARGV[6]), tonumber(ARGV[7]), ARGV, 8)
end
return 1
"""
)

# KEYS: lock. ARGV: holder (`<worker>/<incarnation>`), `<worker>/`, ttl ms. Takes a free lock, or one that an earlier
# incarnation of this worker held (it is dead: a name runs in one process at a time). Never one it holds itself: a job
# delivered twice to the same incarnation runs once.
LOCK_LUA = """
local holder = redis.call('GET', KEYS[1])
if holder and (holder == ARGV[1] or string.sub(holder, 1, #ARGV[2]) ~= ARGV[2]) then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3])
return 1
"""

# KEYS: lock. ARGV: holder. Deletes the lock only while that holder has it.
RELEASE_LOCK_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# KEYS: lock. ARGV: holder, ttl ms. Refreshes the lock only while this worker still holds it.
REFRESH_LOCK_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""


def lock_holder(worker_id: str, incarnation: str) -> str:
    return f"{worker_id}/{incarnation}"


class JobQueue:
    def __init__(self, redis: Redis, worker_id: str, claim_idle_ms: int = 15_000, incarnation: str = "0") -> None:
        self.redis = redis
        self.worker_id = worker_id
        self.holder = lock_holder(worker_id, incarnation)
        self.own_stream = worker_stream(worker_id)
        self.claim_idle_ms = claim_idle_ms
        self._backlog: list[Job] = []
        self._recovered = False

    async def ensure_groups(self) -> None:
        for stream in (keys.JOBS_STREAM, self.own_stream):
            try:
                # From id 0, so jobs enqueued before the first worker started are not skipped.
                await self.redis.xgroup_create(stream, keys.JOBS_GROUP, id="0", mkstream=True)
            except ResponseError as error:
                if "BUSYGROUP" not in str(error):
                    raise

    async def next(self, block_ms: int = 1000) -> Job | None:
        """The next job to look at: backlog first (own pending, reclaimed), then new entries on either Stream."""
        if not self._recovered:
            self._recovered = True
            await self._read_own_pending()
        if not self._backlog:
            await self._reclaim()
        if self._backlog:
            return self._backlog.pop(0)
        reply: Any = await self.redis.xreadgroup(
            keys.JOBS_GROUP,
            self.worker_id,
            {self.own_stream: ">", keys.JOBS_STREAM: ">"},
            count=1,
            block=block_ms,
        )
        for stream, entries in reply or []:
            for entry_id, fields in entries:
                self._backlog.append(_job(stream, entry_id, fields))
        return self._backlog.pop(0) if self._backlog else None

    async def _read_own_pending(self) -> None:
        """After a restart under the same name: the entries this consumer had taken but not acked."""
        for stream in (self.own_stream, keys.JOBS_STREAM):
            reply: Any = await self.redis.xreadgroup(keys.JOBS_GROUP, self.worker_id, {stream: "0"}, count=100)
            for stream_name, entries in reply or []:
                for entry_id, fields in entries:
                    job = _job(stream_name, entry_id, fields)
                    if not job.fields:  # deleted from the Stream after delivery: nothing left to do
                        await self.redis.xack(stream, keys.JOBS_GROUP, job.entry_id)
                        continue
                    log.info("%s: resuming its own pending job %s", self.worker_id, job.job_id)
                    self._backlog.append(job)

    async def _reclaim(self) -> None:
        """Pending entries of consumers that stopped refreshing them (dead workers) on the shared Stream."""
        reply = await self.redis.xautoclaim(
            keys.JOBS_STREAM, keys.JOBS_GROUP, self.worker_id, min_idle_time=self.claim_idle_ms, count=10
        )
        claimed = reply[1] if reply else []
        for entry_id, fields in claimed:
            job = _job(keys.JOBS_STREAM, entry_id, fields)
            if not job.fields:
                await self.redis.xack(keys.JOBS_STREAM, keys.JOBS_GROUP, job.entry_id)
                continue
            log.info("%s: reclaimed job %s from a dead consumer", self.worker_id, job.job_id)
            self._backlog.append(job)

    async def is_done(self, job: Job) -> bool:
        return bool(await self.redis.exists(done_key(job.job_id)))

    async def lock(self, job: Job) -> bool:
        """Takes the job's lock; False when another live worker (or this one, already) is working on it."""
        taken = await self.redis.eval(  # type: ignore[misc]
            LOCK_LUA, 1, lock_key(job.job_id), self.holder, f"{self.worker_id}/", self.claim_idle_ms
        )
        return bool(taken)

    async def holds(self, job: Job) -> bool:
        """Whether this worker still holds the job's lock (nobody took the job over)."""
        holder = await self.redis.get(lock_key(job.job_id))
        return text(holder) == self.holder if holder is not None else False

    async def refresh(self, job: Job) -> None:
        """Keeps a running job ours: refreshes its lock and resets its idle time so nobody reclaims it."""
        await self.redis.eval(REFRESH_LOCK_LUA, 1, lock_key(job.job_id), self.holder, self.claim_idle_ms)  # type: ignore[misc]
        await self.redis.xclaim(job.stream, keys.JOBS_GROUP, self.worker_id, 0, [job.entry_id], justid=True)

    async def complete(self, job: Job, outcome: str, session_events: list[tuple[str, dict[str, Any]]]) -> bool:
        """Marks the job done, appends the worker's events for it and acks it, atomically. False if it was done."""
        argv: list[str | int] = [
            keys.JOBS_GROUP,
            job.entry_id,
            outcome,
            DONE_TTL_S,
            1 if job.stream != keys.JOBS_STREAM else 0,
            events.limits().max_events,
            events.limits().max_bytes,
        ]
        for event_type, data in session_events:
            argv.extend([event_type, json.dumps(data, separators=(",", ":"))])
        sid = job.session_id or "-"
        result = await self.redis.eval(  # type: ignore[misc]
            COMPLETE_LUA,
            7,
            job.stream,
            done_key(job.job_id),
            lock_key(job.job_id),
            *events.stream_keys(sid),
            *argv,
        )
        return bool(result)

    async def skip(self, job: Job) -> None:
        """Acks a job that needs no work (already done, or unreadable with no session to tell)."""
        await self.redis.xack(job.stream, keys.JOBS_GROUP, job.entry_id)
        if job.stream != keys.JOBS_STREAM:
            await self.redis.xdel(job.stream, job.entry_id)


async def release_dead(redis: Redis, worker_id: str, incarnation: str, idle_ms: int) -> int:
    """A worker incarnation is known dead (Ray said so): its jobs become takeable at once instead of after
    `idle_ms`. Its locks are deleted (only while that incarnation holds them) and its pending entries on the shared
    Stream are marked idle for `idle_ms`, so any worker's next XAUTOCLAIM takes them. Returns how many."""
    holder = lock_holder(worker_id, incarnation)
    released = 0
    for stream in (keys.JOBS_STREAM, worker_stream(worker_id)):
        try:
            pending: Any = await redis.xpending_range(stream, keys.JOBS_GROUP, "-", "+", 1000, consumername=worker_id)
        except ResponseError:  # no such Stream or group yet
            continue
        ids: list[Any] = [text(entry["message_id"]) for entry in pending or []]
        if not ids:
            continue
        entries: Any = await redis.xrange(stream, ids[0], ids[-1])
        for entry_id, fields in entries or []:
            job = _job(stream, entry_id, fields)
            if job.entry_id in ids:
                await redis.eval(RELEASE_LOCK_LUA, 1, lock_key(job.job_id), holder)  # type: ignore[misc]
        # Still this consumer's (its restarted incarnation reads its own pending entries back), but idle enough
        # for anyone's XAUTOCLAIM.
        await redis.xclaim(stream, keys.JOBS_GROUP, worker_id, 0, ids, idle=idle_ms, justid=True)
        released += len(ids)
    return released
