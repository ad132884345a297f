"""Prune-to-next-token: evict scattered positions in place and decode, against a re-prefill of the survivors and
decode. The same filled cache is restored (untimed) before every measured run."""

from __future__ import annotations

import time

import numpy as np

from services.inference.engine import Engine, SessionCache


def fill(engine: Engine, ids: list[int]) -> dict[str, np.ndarray]:
    cache = engine.new_cache()
    engine.prefill(cache, ids, list(range(len(ids))), capture=None)
    return engine.export_cache(cache)


def scattered(n: int, count: int, seed: int) -> list[int]:
    rng = np.random.default_rng(seed)
    return sorted(int(p) for p in rng.choice(np.arange(1, n - 1), size=count, replace=False))


def in_place(engine: Engine, cache: SessionCache, drop: list[int], token: int) -> tuple[float, float]:
    """(evict + next token, evict alone) in seconds."""
    started = time.perf_counter()
    engine.evict(cache, drop)
    evicted = time.perf_counter()
    engine.decode(cache, token, cache.next_position, capture="mean")
    return time.perf_counter() - started, evicted - started


def reprefill(engine: Engine, cache: SessionCache, drop: list[int], token: int) -> tuple[float, float]:
    """(rebuild + next token, rebuild alone) in seconds."""
    started = time.perf_counter()
    dropped = set(drop)
    kept = [(p, t) for p, t in zip(cache.positions, cache.token_ids, strict=True) if p not in dropped]
    engine.rebuild(cache, [t for _, t in kept], [p for p, _ in kept])
    rebuilt = time.perf_counter()
    engine.decode(cache, token, cache.next_position, capture="mean")
    return time.perf_counter() - started, rebuilt - started
