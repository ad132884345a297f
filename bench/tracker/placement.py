"""Where Redis runs relative to the tracker, and what this machine charges for it.

A step ends with one round trip to Redis, and between two steps Redis sits idle for a few hundred microseconds. On
a virtual machine an idle vCPU is halted, and waking it for the next request costs far more than the request itself
(seen here: a PING after 300 µs of work took ~105 µs to a Redis on the other vCPU, ~16 µs to one on the same vCPU).
So the bench also times the 8k step with Redis pinned to the tracker's core, beside the placement the OS chooses,
and measures that wake-up cost in the same run: the difference is the machine's, not the tracker's.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager

from redis.asyncio import Redis

from services.tracker import wire

GAP_S = 300e-6  # about a step's own work between two round trips
PROBES = 300


def cores() -> list[int]:
    return sorted(os.sched_getaffinity(0))


@contextmanager
def pinned(redis_pid: int, redis_core: int, own_core: int) -> Iterator[None]:
    """Pins Redis and this process to the given cores for the block, then lets both run anywhere again."""
    everywhere = set(cores())
    try:
        os.sched_setaffinity(redis_pid, {redis_core})
        os.sched_setaffinity(0, {own_core})
        yield
    finally:
        os.sched_setaffinity(redis_pid, everywhere)
        os.sched_setaffinity(0, everywhere)


def _busy(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


async def ping_after_work(client: Redis, probes: int = PROBES) -> list[float]:
    """PING round trips on the tracker's own kind of connection, each after GAP_S of busy work (as a step does)."""
    pipe = await wire.Pipe.open(client)
    try:
        ping = wire.pack(b"PING")
        samples = []
        for _ in range(probes):
            _busy(GAP_S)
            started = time.perf_counter()
            await pipe.exchange(ping, 1)
            samples.append(time.perf_counter() - started)
        return samples
    finally:
        pipe.close()
