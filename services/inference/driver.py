"""The Ray driver: starts N worker actors, watches them, and serves status, health and metrics for all of them.

Each actor declares its resources (one GPU where CUDA is available, otherwise a fraction of the CPUs, so that N
actors share a small machine instead of blocking each other) and `max_restarts=-1`: Ray restarts a dead actor, which
reloads its engine and resumes under the same worker name.

Ray tells the driver when an actor dies (its next poll fails with `RayActorError`): the driver then releases the dead
incarnation's jobs and marks the worker not alive, so that an idle worker continues its replies within a poll or two
instead of after the claim time-out (`jobs.release_dead`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from redis.asyncio import Redis

from services.common import keys
from services.common.errors import Unavailable
from services.inference import affinity, forget, jobs
from services.inference.actor import WorkerActor
from services.inference.config import InferenceConfig
from services.inference.engine import Engine, EngineConfig
from services.inference.metrics import StatsCollector
from services.inference.scheduler import Limits
from services.inference.worker import FORGET_WAIT_S, WorkerSettings

log = logging.getLogger(__name__)

POLL_S = 1.0
POLL_TIMEOUT_S = 5.0
# A worker lets go of a session within its own wait for the session's job (worker.FORGET_WAIT_S) and a margin.
FORGET_TIMEOUT_S = FORGET_WAIT_S + 10


def build_engine(
    config: EngineConfig, kind: str = "native", limits: Limits | None = None, max_model_len: int = 0
) -> Engine:
    """The worker's engine. `vllm` is imported only here: it lives in its own environment (docs/vllm.md)."""
    if kind == "vllm":
        from services.inference.engine_vllm import VllmEngine, VllmOptions

        limits = limits or Limits()
        options = VllmOptions(
            max_running=limits.max_running,
            max_model_len=max_model_len or VllmOptions().max_model_len,
            kv_cache_bytes=limits.kv_budget_bytes,
            max_step_tokens=limits.max_step_tokens,
        )
        return VllmEngine(config, options)  # type: ignore[return-value]  # the same interface, duck-typed
    return Engine(config)


class Driver:
    def __init__(self, config: InferenceConfig, redis: Redis | None = None) -> None:
        self.config = config
        self.redis = redis  # for a session's erase (forget)
        self.collector = StatsCollector()
        self.actors: dict[str, Any] = {}
        self._info: dict[str, dict[str, Any]] = {}
        self._engine: dict[str, str] = {}
        self._released: set[str] = set()  # incarnations whose jobs were released after Ray reported them dead

    def actor_options(self, gpu: bool) -> dict[str, Any]:
        if gpu:
            return {"num_gpus": 1, "num_cpus": 1, "max_restarts": -1}
        return {"num_cpus": self.config.ray_num_cpus / self.config.workers, "max_restarts": -1}

    def start(self) -> None:
        import ray

        gpu = self.config.device.startswith("cuda")
        threads = max(1, self.config.ray_num_cpus // self.config.workers)
        engine_config = EngineConfig(
            model_path=self.config.model_path,
            device=self.config.device,
            dtype=self.config.dtype,
            threads=None if gpu else threads,
        )
        remote = ray.remote(WorkerActor).options(**self.actor_options(gpu))
        for index in range(self.config.workers):
            worker_id = f"{self.config.worker_prefix}-{index}"
            settings = WorkerSettings(
                worker_id=worker_id,
                redis_url=self.config.redis_url,
                tracker_addr=self.config.tracker_addr,
                snapshot_addr=self.config.snapshot_addr,
                claim_idle_ms=self.config.claim_idle_ms,
                limits=self.config.limits,
            )
            factory = functools.partial(
                build_engine, engine_config, self.config.engine, self.config.limits, self.config.vllm_max_model_len
            )
            self.actors[worker_id] = remote.remote(settings, factory)

    async def poll(self, redis: Redis | None = None) -> bool:
        """Asks every actor for its stats; True when at least one has its engine loaded and serves. An actor Ray
        reports dead has its jobs released (given `redis`)."""
        from ray.exceptions import ActorUnavailableError, RayActorError

        dead: list[str] = []

        async def ask(worker_id: str, actor: Any) -> tuple[str, dict[str, Any] | None]:
            try:
                return worker_id, await asyncio.wait_for(actor.info.remote(), POLL_TIMEOUT_S)
            except (RayActorError, ActorUnavailableError):  # died (Ray restarts it) or is being restarted
                dead.append(worker_id)
                return worker_id, None
            except Exception:  # busy loading: not alive for this poll
                return worker_id, None

        answers = await asyncio.gather(*(ask(w, a) for w, a in self.actors.items()))
        if redis is not None:
            for worker_id in dead:
                await self._release(redis, worker_id)
        ready = False
        for worker_id, info in answers:
            if info is not None and info.get("error"):
                log.error("%s: %s", worker_id, info["error"])
            serving = info is not None and info["stats"]["ready"] and not info.get("error")
            snap = info["stats"] if serving and info is not None else None
            self.collector.update(worker_id, snap)
            if info is not None:
                self._info[worker_id] = info
                self._engine = info.get("engine") or self._engine
            ready = ready or snap is not None
        return ready

    async def _release(self, redis: Redis, worker_id: str) -> None:
        incarnation = ((self._info.get(worker_id) or {}).get("stats") or {}).get("incarnation")
        if not incarnation or incarnation in self._released:
            return
        try:
            await redis.delete(affinity.alive_key(worker_id))  # its sessions are routed to live workers meanwhile
            released = await jobs.release_dead(redis, worker_id, incarnation, self.config.claim_idle_ms + 1)
        except Exception as error:  # Redis away: the claim time-out still frees them, only later
            log.warning("%s died; could not release its jobs yet: %s", worker_id, error)
            return
        self._released.add(incarnation)
        log.warning("%s died (Ray restarts it); %d of its jobs released to the other workers", worker_id, released)

    async def forget(self, session_id: str) -> forget.Forgotten:
        """Erases a session from every actor and from the service's Redis keys (services/inference/forget.py)."""
        if self.redis is None:
            raise Unavailable("the driver has no Redis client")
        from ray.exceptions import ActorUnavailableError, RayActorError

        def ask(worker_id: str, actor: Any) -> Callable[[str], Awaitable[forget.Forgot | None]]:
            async def call(sid: str) -> forget.Forgot | None:
                try:
                    forgot: forget.Forgot = await asyncio.wait_for(actor.forget.remote(sid), FORGET_TIMEOUT_S)
                    return forgot
                except (RayActorError, ActorUnavailableError):
                    return None  # dead or restarting: a new incarnation starts with no cache
                except TimeoutError:
                    raise Unavailable(f"{worker_id} did not let go of session {sid} in time") from None

            return call

        return await forget.forget_session(
            self.redis, session_id, {worker_id: ask(worker_id, actor) for worker_id, actor in self.actors.items()}
        )

    async def stream_lag(self, redis: Redis) -> None:
        with contextlib.suppress(Exception):
            for group in await redis.xinfo_groups(keys.JOBS_STREAM):
                name = group.get("name")
                if (name.decode() if isinstance(name, bytes) else name) == keys.JOBS_GROUP:
                    self.collector.stream_lag = int(group.get("lag") or 0)

    def engine_info(self) -> dict[str, str]:
        return dict(self._engine)

    def workers(self) -> list[dict[str, Any]]:
        rows = []
        for worker_id in self.actors:
            stats = (self._info.get(worker_id) or {}).get("stats") or {}
            rows.append(
                {
                    "worker_id": worker_id,
                    "alive": worker_id in self.collector.alive,
                    "sessions": int(stats.get("sessions", 0)),
                    "kv_bytes": int(stats.get("kv_bytes", 0)),
                    "jobs_done": int(stats.get("jobs_done", 0)),
                    "pid": int(stats.get("pid", 0)),
                }
            )
        return rows

    async def stop(self) -> None:
        """Lets every actor finish its job at hand, then ends them."""
        import ray

        async def stop_one(actor: Any) -> None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(actor.stop.remote(), 15)
            with contextlib.suppress(Exception):
                ray.kill(actor, no_restart=True)

        await asyncio.gather(*(stop_one(a) for a in self.actors.values()))
