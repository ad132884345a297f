"""Fixtures shared by every test: a real Redis on a free port, started and stopped by its own pid."""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from devstack.procs import Proc, free_port, start_redis
from devstack.stack import Stack
from tests.support import run_guard

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"

# A test run shares two cores between the engines and every service it starts. OpenMP threads spin at barriers by
# default, and a spinning thread whose partner was descheduled burns its slice: measured under such load, the native
# engine decoded 2.5-6x slower and vLLM's 5.6x slower than with passive waiting (on a quiet machine spinning wins at
# 8 conversations, 70 against 45 tokens/s, so the services leave it to the operator: docs/vllm.md). Read when torch
# (or vLLM's runtime) loads, which no import above does; the processes the tests start inherit it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("KMP_BLOCKTIME", "0")  # Intel's OpenMP (vLLM's CPU kernels): the same, in its own words

# tests/vllm import vLLM, which lives in its own environment (.venv-vllm): `make test-vllm` runs them there.
collect_ignore = [] if importlib.util.find_spec("vllm") is not None else ["vllm"]


def pytest_configure(config: pytest.Config) -> None:
    run_guard.install(config)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Proc, str]]:
    """One redis-server for the test session; yields (process, redis URL)."""
    data = tmp_path_factory.mktemp("redis")
    port = free_port()
    proc = start_redis(data, port, data / "redis.log")
    try:
        yield proc, f"redis://127.0.0.1:{port}/0"
    finally:
        proc.stop()


@pytest.fixture
def redis_url(redis_server: tuple[Proc, str]) -> Iterator[str]:
    """A Redis URL whose database is flushed before each test."""
    import redis

    url = redis_server[1]
    client = redis.Redis.from_url(url)
    client.flushdb()
    client.close()
    yield url


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The whole system as real processes on free ports, shared by every test that needs it.

    The services' logs stay under test-artifacts/stack-logs for a failed run to be read.
    """
    workdir = tmp_path_factory.mktemp("stack")
    with Stack(workdir=workdir) as running:
        try:
            yield running
        finally:
            dead = running.dead()
            logs = ARTIFACTS / "stack-logs"
            logs.mkdir(parents=True, exist_ok=True)
            for log in (workdir / "logs").glob("*.log"):
                (logs / log.name).write_bytes(log.read_bytes())
            assert not dead, f"services died during the tests: {dead}"
