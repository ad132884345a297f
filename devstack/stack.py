"""The whole system as local processes: Redis, tracker, snapshot, inference (Ray), gateway.

Used by `make run` (fixed, friendly ports where free) and by the end-to-end tests (free ports, a private work dir).
Services are started in dependency order and each is waited on through its own health check, never a fixed sleep.
With `supervise` (make run, the fault tests) a service that exits is started again on the same ports (`supervisor`).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import httpx
from pydantic import Field

from devstack.procs import Proc, free_port, python_module, redis_argv, redis_ping, wait_until
from devstack.supervisor import Service, Supervisor
from devstack.vllm_env import vllm_python
from services.common.config import EnvSettings
from services.common.grpc_server import check_health

# Generous: the inference service loads the model and starts Ray, which takes tens of seconds on a busy 2-core machine.
START_TIMEOUTS = {"tracker": 90.0, "snapshot": 60.0, "inference": 240.0, "gateway": 60.0}
SERVICES = ("tracker", "snapshot", "inference", "gateway")  # in start order
STARTED_TOGETHER = ("tracker", "snapshot", "inference")  # each of these needs only Redis to be ready


def grpc_healthy(address: str) -> bool:
    return asyncio.run(check_health(address, timeout=2.0))


def http_ok(url: str) -> bool:
    return httpx.get(url, timeout=2.0).status_code == 200


@dataclass
class Ports:
    redis: int
    tracker: int
    snapshot: int
    inference: int
    gateway: int
    tracker_metrics: int
    snapshot_metrics: int
    inference_metrics: int

    @classmethod
    def free(cls) -> Ports:
        return cls(*(free_port() for _ in range(8)))


@dataclass
class Stack:
    """Starts everything on enter, stops everything (by pid, in reverse order) on exit.

    `services` starts a subset (benchmarks and tests of one service); the others' addresses then point at ports nobody
    listens on. `redis_url_override` uses a Redis that is already running instead of starting one. `supervise`
    restarts a service that exits (`supervisor.history` says when); without it `dead()` names the ones that did.
    """

    workdir: Path
    services: tuple[str, ...] = SERVICES
    redis_url_override: str | None = None
    workers: int = 1
    snapshot_url: str | None = None
    env: dict[str, str] | None = None
    ports: Ports = field(default_factory=Ports.free)
    redis_appendonly: bool = True
    log: bool = False  # print progress lines (make run)
    supervise: bool = False
    supervisor: Supervisor | None = None
    engine: str = "native"  # the inference workers' engine; `vllm` runs the service in the vLLM environment

    # ---- addresses ------------------------------------------------------------------------------------------------
    @property
    def redis_url(self) -> str:
        return self.redis_url_override or f"redis://127.0.0.1:{self.ports.redis}/0"

    @property
    def tracker_addr(self) -> str:
        return f"127.0.0.1:{self.ports.tracker}"

    @property
    def snapshot_addr(self) -> str:
        return f"127.0.0.1:{self.ports.snapshot}"

    @property
    def inference_addr(self) -> str:
        return f"127.0.0.1:{self.ports.inference}"

    @property
    def gateway_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.gateway}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.ports.gateway}/v1/chat"

    @property
    def metrics_urls(self) -> dict[str, str]:
        return {
            "tracker": f"http://127.0.0.1:{self.ports.tracker_metrics}/metrics",
            "snapshot": f"http://127.0.0.1:{self.ports.snapshot_metrics}/metrics",
            "inference": f"http://127.0.0.1:{self.ports.inference_metrics}/metrics",
            "gateway": f"{self.gateway_url}/metrics",
        }

    # ---- lifecycle ------------------------------------------------------------------------------------------------
    def service_env(self) -> dict[str, str]:
        snapshots = self.workdir / "snapshots"
        return {
            "HALOWEAVE_REDIS_URL": self.redis_url,
            "HALOWEAVE_TRACKER_ADDR": self.tracker_addr,
            "HALOWEAVE_SNAPSHOT_ADDR": self.snapshot_addr,
            "HALOWEAVE_INFERENCE_ADDR": self.inference_addr,
            "HALOWEAVE_TRACKER_LISTEN": self.tracker_addr,
            "HALOWEAVE_SNAPSHOT_LISTEN": self.snapshot_addr,
            "HALOWEAVE_INFERENCE_LISTEN": self.inference_addr,
            "HALOWEAVE_TRACKER_METRICS_PORT": str(self.ports.tracker_metrics),
            "HALOWEAVE_SNAPSHOT_METRICS_PORT": str(self.ports.snapshot_metrics),
            "HALOWEAVE_INFERENCE_METRICS_PORT": str(self.ports.inference_metrics),
            "HALOWEAVE_GATEWAY_HOST": "127.0.0.1",
            "HALOWEAVE_GATEWAY_PORT": str(self.ports.gateway),
            "HALOWEAVE_SNAPSHOT_URL": self.snapshot_url or f"file://{snapshots}",
            "HALOWEAVE_INFERENCE_WORKERS": str(self.workers),
            # Ray keeps its session files here rather than in /tmp/ray, so parallel stacks never share one.
            "RAY_TMPDIR": str(self.workdir / "ray"),
            "PYTHONUNBUFFERED": "1",
            "HALOWEAVE_ENGINE": self.engine,
            **(self.env or {}),
        }

    @property
    def procs(self) -> dict[str, Proc]:
        """The current process of every started service (redis included), by name."""
        return self.supervisor.procs if self.supervisor is not None else {}

    def _say(self, message: str) -> None:
        if self.log:
            print(f"  {message}", flush=True)

    def _services(self) -> list[Service]:
        """What the supervisor starts, in order; each restart runs the same command with the same environment."""
        logs = self.workdir / "logs"
        services = []
        if self.redis_url_override is None:
            data, port = self.workdir / "redis", self.ports.redis
            data.mkdir(parents=True, exist_ok=True)
            argv = redis_argv(data, port, appendonly=self.redis_appendonly)
            spawn = functools.partial(Proc, "redis", argv, {}, logs / "redis.log")
            services.append(Service("redis", spawn, functools.partial(redis_ping, port), 15))
        checks: dict[str, Callable[[], bool]] = {
            "tracker": lambda: grpc_healthy(self.tracker_addr),
            "snapshot": lambda: grpc_healthy(self.snapshot_addr),
            "inference": lambda: grpc_healthy(self.inference_addr),
            "gateway": lambda: http_ok(f"{self.gateway_url}/healthz"),
        }
        env = self.service_env()
        for name in SERVICES:
            if name in self.services:
                python = vllm_python() if name == "inference" and self.engine == "vllm" else None
                argv = python_module(f"services.{name}", python=python)
                spawn = functools.partial(Proc, name, argv, env, logs / f"{name}.log")
                # Tracker, snapshot and inference need only Redis to start: they start together (the inference
                # service's Ray and model take ~13 s, the others' ~5 s then pass meanwhile). The gateway follows.
                together = name in STARTED_TOGETHER and bool(services) and services[-1].name in STARTED_TOGETHER
                services.append(Service(name, spawn, checks[name], START_TIMEOUTS[name], with_previous=together))
        return services

    def start(self) -> Stack:
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "ray").mkdir(exist_ok=True)
        unknown = set(self.services) - set(SERVICES)
        if unknown:
            raise ValueError(f"unknown services {sorted(unknown)}; known: {', '.join(SERVICES)}")
        if "inference" in self.services:
            self._say("(the inference service loads the model and starts Ray: its first start takes a while)")
        self.supervisor = Supervisor(self._services(), restart=self.supervise, say=self._say)
        self.supervisor.start()
        try:
            if set(self.services) == set(SERVICES):  # /readyz needs every dependency up
                wait_until(lambda: http_ok(f"{self.gateway_url}/readyz"), 60, "gateway /readyz", self.procs["gateway"])
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self.supervisor is not None:
            self.supervisor.stop()

    def dead(self) -> list[str]:
        """Names of started services whose process has exited (and, when supervised, is not back yet)."""
        return self.supervisor.dead() if self.supervisor is not None else []

    def __enter__(self) -> Stack:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


class StackSettings(EnvSettings):
    state_dir: Path = Field(
        default_factory=lambda: Path(__file__).resolve().parents[1] / ".state" / "run",
        validation_alias="HALOWEAVE_STATE_DIR",
        description="Where `make run` keeps its Redis data, snapshots and logs.",
        json_schema_extra={"shown_default": "`.state/run` in the repository"},
    )


def default_workdir() -> Path:
    return StackSettings().state_dir
