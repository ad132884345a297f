"""A Ray actor that evaluates conversations: the worker's inference engine, a tracker engine, a private Redis.

Each actor starts its own redis-server on its node (the tracker's store needs one, and a private one keeps actors
from contending), so the benchmark scales over a cluster with nothing shared but the driver.
"""

from __future__ import annotations

import asyncio
import atexit
import os
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

from devstack.procs import free_port, start_redis
from services.inference.engine import Engine, EngineConfig
from services.tracker.engine import Engine as Tracker
from services.tracker.store import Store
from services.tracker.template import ChatTemplate

from .runner import Policy, Runner
from .tasks import generate


class QualityWorker:
    """Wrapped with `ray.remote` by the driver; usable in-process too."""

    def __init__(self, threads: int, generate_replies: bool = False, reply_tokens: int = 32) -> None:
        data = Path(tempfile.mkdtemp(prefix="haloweave-quality-"))
        port = free_port()
        self._redis = start_redis(data, port, data / "redis.log")
        atexit.register(self._redis.stop)
        self._loop = asyncio.new_event_loop()
        self._client = Redis.from_url(f"redis://127.0.0.1:{port}/0")
        # The engine's torch work runs on the thread that calls this actor's methods: one thread, one OpenMP team.
        self.engine = Engine(EngineConfig(threads=threads))
        template = ChatTemplate(self.engine.tokenizer)
        tracker = Tracker(Store(self._client), template, self.engine.model_name, self.engine.tokenizer_fingerprint)
        self.runner = Runner(self.engine, tracker, generate=generate_replies, reply_tokens=reply_tokens)

    def ready(self) -> dict[str, Any]:
        return {"host": socket.gethostname(), "pid": os.getpid(), "model": self.engine.model_name}

    def evaluate(self, task: str, index: int, seed: int, policies: list[str], budgets: list[float]) -> dict[str, Any]:
        chat = generate(task, index, seed)
        started = time.perf_counter()
        run = self.runner.evaluate(chat, [Policy.parse(p) for p in policies], budgets)
        records = self._loop.run_until_complete(run)
        self._loop.run_until_complete(self._client.flushdb())  # the sessions are done with: keep Redis small
        return {"records": records, "seconds": time.perf_counter() - started, "worker": self.ready()}

    def close(self) -> None:
        self._loop.run_until_complete(self._client.aclose())
        self._redis.stop()
