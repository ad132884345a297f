"""The worker actor (as a plain object, as Ray hosts it) with a vLLM engine that cannot start: it reports why, and
never says it is ready (the service's health then stays NOT_SERVING, as for the native engine)."""

from __future__ import annotations

import functools
import time
from pathlib import Path

from services.inference.actor import WorkerActor
from services.inference.driver import build_engine
from services.inference.engine import EngineConfig
from services.inference.scheduler import Limits
from services.inference.worker import WorkerSettings


def test_a_model_vllm_refuses_is_reported_and_the_worker_never_ready(unknown_architecture: Path) -> None:
    limits = Limits(kv_budget_bytes=64 << 20)
    factory = functools.partial(build_engine, EngineConfig(model_path=str(unknown_architecture)), "vllm", limits, 256)
    settings = WorkerSettings("w-bad", "redis://127.0.0.1:1/0", "127.0.0.1:1", "127.0.0.1:1", limits=limits)
    actor = WorkerActor(settings, factory)
    deadline = time.monotonic() + 60
    while actor.info()["error"] is None and time.monotonic() < deadline:
        time.sleep(0.1)
    error = actor.info()["error"]
    assert error is not None and "vLLM could not start unknown-architecture" in error, error
    assert not actor.ready()
