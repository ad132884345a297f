"""The real processes the benchmark needs: a private redis-server, the tracker (sessions) and the gateway."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from devstack.stack import Stack


@dataclass
class Running:
    redis_url: str
    ws_url: str
    metrics_url: str


@contextlib.contextmanager
def running(workdir: Path) -> Iterator[Running]:
    # The benchmark measures relaying only: no snapshot service or workers are started.
    stack = Stack(
        workdir,
        services=("tracker", "gateway"),
        redis_appendonly=False,
        env={"HALOWEAVE_LOG_LEVEL": "WARNING"},
    )
    with stack:
        yield Running(stack.redis_url, stack.ws_url, stack.metrics_urls["gateway"])
