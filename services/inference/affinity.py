"""Session affinity between N workers: a session's jobs go to the worker that holds its KV cache.

Redis keys (owned by the inference service):
- `hw:inf:alive:{worker}`: set with a time-out that the worker's heartbeat refreshes; gone means the worker is dead.
- `hw:inf:workers`: every worker name ever seen, so that a dead worker's forwarded jobs can be found.
- `hw:inf:owner:{<sid>}`: the worker holding the session's cache.
- `hw:inf:load`: a hash, worker -> replies it has taken on and not finished (running, waiting, opening), written on
  every change and with every heartbeat.

Every worker reads the shared job Stream. For a job it takes, one Lua script decides atomically: if the session's
owner is another worker that is alive, the job is forwarded to that worker's own Stream (`jobs.worker_stream`) and
acked on the shared one. Otherwise (no owner, or the owner is dead) the session goes to the least loaded live worker
(this one at equal load): if that is another, the job is forwarded to it and it becomes the owner; else this worker
becomes the owner and runs it. A worker that takes over a session it did not hold restores the cache from the last
offload snapshot or rebuilds it from the tracker's active tokens (see `sessions`).

A dead worker that Ray restarts keeps its name and picks its own Stream up again. Jobs forwarded to a worker that
stays dead are moved back to the shared Stream by any live worker's sweep, under the same liveness check, and are then
routed like new jobs.
"""

from __future__ import annotations

import logging
from typing import Any

from redis.asyncio import Redis

from services.common import keys
from services.common.redis_text import text
from services.inference.jobs import Job, worker_stream

log = logging.getLogger(__name__)

WORKERS_SET = "hw:inf:workers"
LOAD_HASH = "hw:inf:load"
OWNER_TTL_S = 7 * 24 * 3600


def alive_key(worker_id: str) -> str:
    return f"hw:inf:alive:{worker_id}"


def owner_key(session_id: str) -> str:
    return f"hw:inf:owner:{{{session_id}}}"


# KEYS: shared stream, owner key, workers set, load hash. ARGV: me, group, entry id, owner ttl, then field/value
# pairs of the job. Returns the worker that runs it. (Alive keys and Streams are named from worker names, inside.)
ROUTE_LUA = """
local owner = redis.call('GET', KEYS[2])
local function alive(w) return redis.call('EXISTS', 'hw:inf:alive:' .. w) == 1 end
if not (owner and alive(owner)) then
  -- A new session (or a dead owner's): the least loaded live worker, this one at equal load.
  owner = ARGV[1]
  local least = tonumber(redis.call('HGET', KEYS[4], ARGV[1]) or '0') or 0
  for _, w in ipairs(redis.call('SMEMBERS', KEYS[3])) do
    if w ~= ARGV[1] and alive(w) then
      local load = tonumber(redis.call('HGET', KEYS[4], w) or '0') or 0
      if load < least or (load == least and owner ~= ARGV[1] and w < owner) then owner, least = w, load end
    end
  end
  redis.call('SET', KEYS[2], owner, 'EX', ARGV[4])
end
if owner ~= ARGV[1] then
  local fields = {}
  for i = 5, #ARGV do fields[#fields + 1] = ARGV[i] end
  redis.call('XADD', 'hw:inf:w:' .. owner .. ':jobs', '*', unpack(fields))
  redis.call('XACK', KEYS[1], ARGV[2], ARGV[3])
  -- Counted at once, so that a burst of new sessions spreads instead of all going to the same worker.
  redis.call('HINCRBY', KEYS[4], owner, 1)
end
return owner
"""

# KEYS: the dead worker's stream, the shared stream. ARGV: dead worker, group, entry id, then field/value pairs.
# Moves one entry back to the shared Stream, only while the worker is still dead.
RETURN_LUA = """
if redis.call('EXISTS', 'hw:inf:alive:' .. ARGV[1]) == 1 then return 0 end
local fields = {}
for i = 4, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('XADD', KEYS[2], '*', unpack(fields))
redis.call('XACK', KEYS[1], ARGV[2], ARGV[3])
redis.call('XDEL', KEYS[1], ARGV[3])
return 1
"""


class Affinity:
    def __init__(self, redis: Redis, worker_id: str, heartbeat_ttl_ms: int) -> None:
        self.redis = redis
        self.worker_id = worker_id
        self.heartbeat_ttl_ms = heartbeat_ttl_ms

    async def heartbeat(self, load: int = 0) -> None:
        pipe = self.redis.pipeline(transaction=True)
        pipe.set(alive_key(self.worker_id), "1", px=self.heartbeat_ttl_ms)
        pipe.sadd(WORKERS_SET, self.worker_id)
        pipe.hset(LOAD_HASH, self.worker_id, load)
        await pipe.execute()

    async def report_load(self, load: int) -> None:
        """Replies this worker has taken on: new sessions go to the least loaded worker."""
        await self.redis.hset(LOAD_HASH, self.worker_id, load)

    async def retire(self) -> None:
        """On a clean stop: others take this worker's sessions over at once instead of after the time-out."""
        await self.redis.delete(alive_key(self.worker_id))

    async def route(self, job: Job) -> str:
        """The worker that runs this job: us (now the session's owner) or the live owner it was forwarded to."""
        if job.stream != keys.JOBS_STREAM:
            # Forwarded to us: we are (or were made) the owner.
            await self.redis.set(owner_key(job.session_id), self.worker_id, ex=OWNER_TTL_S)
            return self.worker_id
        pairs: list[str] = []
        for name, value in job.fields.items():
            pairs.extend([name, value])
        owner = await self.redis.eval(  # type: ignore[misc]
            ROUTE_LUA,
            4,
            keys.JOBS_STREAM,
            owner_key(job.session_id),
            WORKERS_SET,
            LOAD_HASH,
            self.worker_id,
            keys.JOBS_GROUP,
            job.entry_id,
            OWNER_TTL_S,
            *pairs,
        )
        return owner.decode() if isinstance(owner, bytes) else str(owner)

    async def owner(self, session_id: str) -> str | None:
        value = await self.redis.get(owner_key(session_id))
        return value.decode() if isinstance(value, bytes) else value

    async def release(self, session_id: str) -> None:
        """Drops ownership if it is still ours (the session's cache was discarded)."""
        if await self.owner(session_id) == self.worker_id:
            await self.redis.delete(owner_key(session_id))

    async def sweep(self) -> int:
        """Moves jobs forwarded to dead workers back to the shared Stream; returns how many."""
        moved = 0
        for raw in await self.redis.smembers(WORKERS_SET):
            other = raw.decode() if isinstance(raw, bytes) else str(raw)
            if other == self.worker_id or await self.redis.exists(alive_key(other)):
                continue
            stream = worker_stream(other)
            entries: Any = await self.redis.xrange(stream, count=100)
            for entry_id, fields in entries or []:
                pairs: list[str] = []
                for name, value in fields.items():
                    pairs.extend([text(name), text(value)])
                moved += int(
                    await self.redis.eval(  # type: ignore[misc]
                        RETURN_LUA, 2, stream, keys.JOBS_STREAM, other, keys.JOBS_GROUP, text(entry_id), *pairs
                    )
                )
        if moved:
            log.info("%s: moved %d jobs of dead workers back to the shared Stream", self.worker_id, moved)
        return moved
