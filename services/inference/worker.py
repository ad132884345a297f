"""One inference worker: takes jobs from Redis, runs them on its engine, keeps its sessions' caches under a budget.

Jobs are taken as they come and each runs as its own task: generate jobs of different sessions join the batch of
the step loop (`batcher`), so they advance together; a session has at most one job at a time (a second reply is
refused as `busy`, a snapshot waits for the reply to end). It knows nothing of Ray (see `actor`), so tests run it
in-process with the real engine against real peers.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from services.common import tasks
from services.common.errors import AlreadyExists, Busy, HaloWeaveError, NotFound, Unavailable
from services.inference import engine_thread
from services.inference.affinity import Affinity
from services.inference.batcher import Batcher, TakenOver
from services.inference.clients import SnapshotClient, TrackerClient
from services.inference.conversation import Conversation, ReplyStats
from services.inference.engine import Engine, SessionCache
from services.inference.forget import Forgot
from services.inference.jobs import BadJob, Job, JobQueue
from services.inference.metrics import WorkerStats
from services.inference.reply import TrackerPeer
from services.inference.scheduler import Limits
from services.inference.sessions import SessionTable
from services.inference.snapshots import Snapshots

log = logging.getLogger(__name__)

Events = list[tuple[str, dict[str, Any]]]
# Every Redis call answers within this or fails (a stalled Redis must not hold a job forever); longer than any
# blocking read this worker makes (the job Stream's 500 ms).
REDIS_TIMEOUT_S = 5.0
# Forgetting a session (its erase) waits this long for a job of it running here to end, asking the tracker to cancel
# its reply every FORGET_CANCEL_EVERY_S.
FORGET_WAIT_S = 30.0
FORGET_CANCEL_EVERY_S = 0.5
FORGOTTEN_KEPT = 4096


def offload_key(session_id: str) -> str:
    """The snapshot that holds a session's offloaded cache, for whichever worker needs it next."""
    return f"hw:inf:offload:{{{session_id}}}"


@dataclass(slots=True, frozen=True)
class WorkerSettings:
    worker_id: str
    redis_url: str
    tracker_addr: str
    snapshot_addr: str
    claim_idle_ms: int = 15_000
    limits: Limits = field(default_factory=Limits)  # batching bounds and the KV budget


class Worker:
    def __init__(self, settings: WorkerSettings, engine: Engine) -> None:
        self.settings = settings
        self.worker_id = settings.worker_id
        self.engine = engine
        self.stats = WorkerStats(settings.worker_id)
        self.sessions: SessionTable[SessionCache] = SessionTable(settings.limits.kv_budget_bytes)
        self.redis = Redis.from_url(
            settings.redis_url, socket_timeout=REDIS_TIMEOUT_S, socket_connect_timeout=REDIS_TIMEOUT_S
        )
        self.tracker = TrackerClient(settings.tracker_addr)
        self.snapshot_client = SnapshotClient(settings.snapshot_addr)
        self.engine_thread = engine_thread.shared()  # every engine call, forwards and snapshots alike, on it
        self.snapshots = Snapshots(engine, self.tracker, self.snapshot_client, self.engine_thread)
        self.queue = JobQueue(self.redis, self.worker_id, settings.claim_idle_ms, self.stats.incarnation)
        self.affinity = Affinity(self.redis, self.worker_id, heartbeat_ttl_ms=settings.claim_idle_ms)
        self.last_reply: ReplyStats | None = None  # for status and tests: how the latest reply went
        self.stats.kv_budget_bytes = settings.limits.kv_budget_bytes
        self.batcher = Batcher(
            engine, settings.limits, self.stats, on_load=self._load_changed, thread=self.engine_thread
        )
        self._tasks: set[asyncio.Task[Any]] = set()
        self._active: dict[str, Job] = {}  # session id -> the job that has it now
        self._session_free: dict[str, asyncio.Event] = {}
        self._replies: dict[str, Conversation] = {}  # job id -> its reply, while the job is at hand
        # Sessions erased lately (ids are never reused): a job of one that reaches this worker late is dropped.
        self._forgotten: OrderedDict[str, None] = OrderedDict()

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.affinity.retire()
        await self.tracker.close()
        await self.snapshot_client.close()
        await self.redis.aclose()

    async def run(self, stop: asyncio.Event) -> None:
        """Serves jobs until `stop` is set, then lets the jobs at hand finish; the heartbeat keeps this worker's
        sessions routed to it."""
        await self.queue.ensure_groups()
        await self.affinity.heartbeat(self.batcher.load)
        self.stats.ready = True
        beat = asyncio.create_task(self._heartbeat(stop))
        halt = asyncio.Event()  # the step loop outlives intake: it stops once the jobs at hand are done
        steps = asyncio.create_task(self.batcher.run(halt))
        try:
            while not stop.is_set():
                try:
                    job = await self.queue.next(block_ms=500)
                    if job is not None:
                        self._spawn(self.handle(job))
                except ResponseError as error:
                    if "NOGROUP" not in str(error):
                        raise
                    # Redis lost the group (restarted without persistence, or flushed): make it again and go on.
                    log.warning("%s: job group missing; recreating it", self.worker_id)
                    await self.queue.ensure_groups()
                except (RedisConnectionError, RedisTimeoutError) as error:
                    # A pending job stays pending in Redis and is picked up again once it is back.
                    log.warning("%s: Redis unavailable (%s); retrying", self.worker_id, error)
                    await asyncio.sleep(1.0)
            if self._tasks:
                await asyncio.wait(set(self._tasks))
        finally:
            halt.set()
            await tasks.end([beat, steps, *self._tasks])

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _load_changed(self, load: int) -> None:
        self._spawn(self._report_load(load))

    async def _report_load(self, load: int) -> None:
        try:
            await self.affinity.report_load(load)
        except Exception as error:  # the next heartbeat reports it again
            log.debug("%s: could not report load: %s", self.worker_id, error)

    async def _heartbeat(self, stop: asyncio.Event) -> None:
        period = self.settings.claim_idle_ms / 3000
        while not stop.is_set():
            try:
                await self.affinity.heartbeat(self.batcher.load)
                await self.affinity.sweep()
            except Exception:
                log.exception("%s: heartbeat failed", self.worker_id)
            await asyncio.sleep(period)

    async def handle(self, job: Job) -> None:
        """Takes one job from the queue to its single completion (or forwards it to the worker that owns it)."""
        try:
            await self._handle(job)
        except Exception:
            # Redis went away mid-job, say: the job stays pending and is taken again (reclaimed or re-read).
            log.exception("%s: job %s left pending", self.worker_id, job.job_id)

    async def _handle(self, job: Job) -> None:
        try:
            job.validate()
        except BadJob as error:
            log.warning("%s: refusing job %s: %s", self.worker_id, job.entry_id, error)
            self.stats.job(job.type or "unknown", "invalid")
            if job.session_id:
                await self.queue.complete(job, "invalid", [_error(job, "invalid_argument", str(error))])
            else:
                await self.queue.skip(job)
            return
        if await self.queue.is_done(job):
            await self.queue.skip(job)  # completed before a crash lost the ack
            return
        if any(active.job_id == job.job_id for active in self._active.values()):
            # Our own running job, delivered again (reclaimed from us after a Redis stall kept us from refreshing
            # it): it is already being run here, and completes once, by the run at hand.
            log.info("%s: job %s is already running here; not started twice", self.worker_id, job.job_id)
            return
        owner = await self.affinity.route(job)
        if owner != self.worker_id:
            log.info(
                "%s: job %s forwarded to %s, which holds session %s", self.worker_id, job.job_id, owner, job.session_id
            )
            return
        if not await self.queue.lock(job):
            # Another worker runs it (it will ack it), or a dead one's lock has yet to expire (then it is reclaimed).
            log.info("%s: job %s is locked by another worker; left pending", self.worker_id, job.job_id)
            return
        wait = job.queue_wait_s()
        if wait is not None:
            self.stats.observe("queue_wait_seconds", wait)
        log.info("%s: job %s (%s of session %s) started", self.worker_id, job.job_id, job.type, job.session_id)
        started = time.monotonic()
        keep = asyncio.create_task(self._keep(job))
        try:
            outcome, job_events = await self._one_at_a_time(job)
        finally:
            keep.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keep
        self.stats.job(job.type, outcome)
        if outcome == "forgotten":
            log.info("%s: job %s is of an erased session; dropped", self.worker_id, job.job_id)
            await self.queue.skip(job)
            return
        if outcome == "superseded":
            log.info("%s: job %s was taken over by another worker; left to it", self.worker_id, job.job_id)
            return
        # Before completing: a completed job means the worker is done with it, its memory budget settled too.
        await self._fit_budget(just_used=job.session_id)
        self._fit_cold_budget()
        self._gauges()
        first = await self.queue.complete(job, outcome, job_events)
        took = time.monotonic() - started
        log.info(
            "%s: job %s %s in %.1f s%s", self.worker_id, job.job_id, outcome, took, "" if first else " (done before)"
        )

    async def _keep(self, job: Job) -> None:
        while True:
            await asyncio.sleep(self.settings.claim_idle_ms / 3000)
            try:
                await self.queue.refresh(job)
            except Exception:
                log.exception("%s: could not refresh job %s", self.worker_id, job.job_id)

    async def _one_at_a_time(self, job: Job) -> tuple[str, Events]:
        """Runs the job once the session has no other job here; a second reply while one is generating is refused.
        A reply that has ended (the client may already have its `done` and sent the next message) is not generating,
        though its job may still be tidying up: the next one waits for it."""
        while (active := self._active.get(job.session_id)) is not None:
            if job.type == "generate" and active.type == "generate" and self._generating(active):
                message = f"session {job.session_id} is already generating a reply (job {active.job_id})"
                log.info("%s: job %s refused: %s", self.worker_id, job.job_id, message)
                return "error", [_error(job, Busy.code, message)]
            await self._session_free[job.session_id].wait()
        if job.session_id in self._forgotten:
            return "forgotten", []
        self._active[job.session_id] = job
        self._session_free[job.session_id] = asyncio.Event()
        try:
            return await self._run(job)
        finally:
            del self._active[job.session_id]
            self._replies.pop(job.job_id, None)
            self._session_free.pop(job.session_id).set()

    def _generating(self, job: Job) -> bool:
        """Whether this generate job's reply is still open (or about to be): no Finish or Fail sent yet."""
        reply = self._replies.get(job.job_id)
        return reply is None or not (reply.stats.reason or reply.failing)

    async def _run(self, job: Job) -> tuple[str, Events]:
        """(outcome, events the worker itself appends on completion)."""
        try:
            if job.type == "generate":
                return await self._generate(job)
            if job.type == "snapshot":
                return await self._snapshot(job)
            return await self._restore(job)
        except HaloWeaveError as error:
            log.info("%s: job %s failed: %s %s", self.worker_id, job.job_id, error.code, error.message)
            if isinstance(error, NotFound) and job.session_id not in self.sessions:
                await self.affinity.release(job.session_id)
            return "error", [_error(job, error.code, error.message)]
        except Exception:
            log.exception("%s: job %s failed", self.worker_id, job.job_id)
            return "error", [_error(job, "internal", f"the worker failed on {job.type} job {job.job_id}")]

    async def _generate(self, job: Job) -> tuple[str, Events]:
        cache = await self._cache_for(job.session_id)
        peer = TrackerPeer(self.tracker, job.session_id, job.job_id)
        reply = Conversation(
            self.engine, cache, peer, job.session_id, job.job_id, self.settings.limits.cold_budget_bytes
        )
        reply.holds_job = functools.partial(self.queue.holds, job)
        self._replies[job.job_id] = reply
        self.last_reply = reply.stats
        try:
            stats = await self.batcher.generate(reply)
        except TakenOver:
            return "superseded", []
        except AlreadyExists:
            # This job's reply was finished by a worker that died before marking the job done: complete it silently.
            self.sessions.put(job.session_id, cache)
            log.info("%s: job %s had already finished; not run again", self.worker_id, job.job_id)
            return "duplicate", []
        except HaloWeaveError as error:
            self.sessions.put(job.session_id, cache)  # what the cache holds is checked against the next context
            self.stats.generated_tokens += reply.stats.tokens
            if reply.reported:  # the tracker already told the client
                return "error", []
            raise error
        self.sessions.put(job.session_id, cache)
        self.stats.generated_tokens += stats.tokens
        self.stats.observe("time_to_first_token_seconds", stats.time_to_first_token_s)
        for gap in stats.inter_token_s:
            self.stats.observe("inter_token_latency_seconds", gap)
        return stats.reason or "ok", []

    async def _snapshot(self, job: Job) -> tuple[str, Events]:
        cache = await self._cache_for(job.session_id)
        info, tokens = await self.snapshots.save(job.session_id, cache)
        self.sessions.put(job.session_id, cache)
        data = {"job_id": job.job_id, "snapshot_id": info.snapshot_id, "tokens": tokens, "bytes": int(info.bytes)}
        return "ok", [("snapshot_saved", data)]

    async def _restore(self, job: Job) -> tuple[str, Events]:
        cache, active_tokens = await self.snapshots.restore(job.session_id, job.snapshot_id)
        self.sessions.put(job.session_id, cache)
        await self.redis.delete(offload_key(job.session_id))  # an older offload no longer describes the session
        data = {"job_id": job.job_id, "snapshot_id": job.snapshot_id, "active_tokens": active_tokens}
        return "ok", [("snapshot_restored", data)]

    async def _cache_for(self, session_id: str) -> SessionCache:
        """The session's cache: held, brought back from an offload, or empty (the context sync rebuilds it)."""
        cache = self.sessions.get(session_id)
        if cache is not None:
            return cache
        raw = await self.redis.get(offload_key(session_id))
        if raw is not None:
            snapshot_id = raw.decode() if isinstance(raw, bytes) else str(raw)
            try:
                cache = await self.snapshots.bring_back(session_id, snapshot_id)
                self.stats.restores += 1
                log.info("%s: session %s brought back from %s", self.worker_id, session_id, snapshot_id)
            except HaloWeaveError as error:
                log.warning(
                    "%s: offload %s of %s unusable (%s); rebuilding", self.worker_id, snapshot_id, session_id, error
                )
            await self.redis.delete(offload_key(session_id))
        return cache if cache is not None else self.engine.new_cache()

    async def _fit_budget(self, just_used: str) -> None:
        # The sessions with a job at hand stay (their caches are in use), and so does the one just used.
        for session_id in self.sessions.over_budget(keep={just_used, *self._active}):
            cache = self.sessions.pop(session_id)
            if cache is None:
                continue
            if await self.affinity.owner(session_id) != self.worker_id:
                continue  # another worker took the session over meanwhile: this copy is stale, drop it
            try:
                snapshot_id = await self.snapshots.offload(session_id, cache)
            except HaloWeaveError as error:
                # Dropping is safe: the tracker's active tokens rebuild the cache when the session comes back.
                log.warning("%s: offload of %s failed (%s); dropped", self.worker_id, session_id, error)
                continue
            await self.redis.set(offload_key(session_id), snapshot_id)
            self.stats.offloads += 1
            log.info("%s: session %s offloaded to %s", self.worker_id, session_id, snapshot_id)

    def _fit_cold_budget(self) -> None:
        """The cold tiers share one host budget: beyond it the oldest chunks of the least recently used sessions go.
        What goes is not scored again, so it does not come back (services/inference/recall.py)."""
        caches = self.sessions.caches()
        over = sum(cache.cold.nbytes for cache in caches) - self.settings.limits.cold_budget_bytes
        for cache in caches:
            if over <= 0:
                break
            over -= cache.cold.shed(over)

    async def forget(self, session_id: str, wait_s: float = FORGET_WAIT_S) -> Forgot:
        """Lets go of everything this worker holds of a session being erased (services/inference/forget.py): a job of
        it running here ends first (its reply is cancelled through the tracker, asked again until it has ended, since
        a reply opened after the first cancel would not see it), then the KV cache and its cold tier are dropped and
        the session's ownership released. Unavailable when the job does not end within `wait_s`."""
        forgot = Forgot(self.worker_id)
        self._forgotten[session_id] = None
        while len(self._forgotten) > FORGOTTEN_KEPT:
            self._forgotten.popitem(last=False)
        deadline = time.monotonic() + wait_s
        while (free := self._session_free.get(session_id)) is not None:
            forgot.waited = True
            left = deadline - time.monotonic()
            if left <= 0:
                raise Unavailable(f"{self.worker_id}: a job of session {session_id} did not end within {wait_s:g} s")
            with contextlib.suppress(HaloWeaveError):
                await self.tracker.cancel(session_id)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(free.wait(), min(left, FORGET_CANCEL_EVERY_S))
        cache = self.sessions.pop(session_id)
        if cache is not None:
            forgot.cached, forgot.kv_bytes, forgot.cold_bytes = True, cache.nbytes, cache.cold.nbytes
            await self.engine_thread.run(self.engine.drop, cache)  # what the engine keeps of it beyond the object
        await self.affinity.release(session_id)
        self._gauges()
        log.info("%s: session %s forgotten%s", self.worker_id, session_id, " (its cache dropped)" if cache else "")
        return forgot

    def _gauges(self) -> None:
        self.stats.sessions = len(self.sessions)
        self.stats.kv_bytes = self.sessions.total_bytes
        self.stats.cold_bytes = sum(cache.cold.nbytes for cache in self.sessions.caches())


def _error(job: Job, code: str, message: str) -> tuple[str, dict[str, Any]]:
    return "error", {"code": code, "message": message, "job_id": job.job_id}
