"""Per-step update latency, in process against a real Redis: protobuf frame bytes in, scores written, events appended.

The tracker's layout (packed arrays, one versioned Lua commit per step) is compared with the layout it replaced in
design: one hash field per token, read and written every step (the baseline), on the same sessions and data.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

import numpy as np
import orjson
from haloweave.tracker.v1 import tracker_pb2 as pb
from numpy.typing import NDArray
from redis.asyncio import Redis

from bench.tracker.attention import AttentionModel
from services.common import keys
from services.tracker import convert, scoring
from services.tracker.engine import Engine

LAYERS, HEADS = 30, 9  # SmolLM2-135M: the shape a `full` frame carries
SENTENCE = "The quick brown fox jumps over the lazy dog near the river bank today. "


@dataclass
class Bench:
    engine: Engine
    session_id: str
    job_id: str
    step: int
    positions: NDArray[np.int64]  # the active positions, ascending, as the worker would know them
    attention: AttentionModel

    def advance(self, position: int, evicted: list[int]) -> None:
        self.positions = next_context(self.positions, position, evicted)


def next_context(positions: NDArray[np.int64], position: int, evicted: list[int]) -> NDArray[np.int64]:
    """The active positions after a step, as a worker tracks them: its token appended, the pruned positions gone."""
    grown = np.append(positions, position)
    return np.setdiff1d(grown, evicted, assume_unique=True) if evicted else grown


async def prepare(engine: Engine, context: int, full: bool, history: int = 0) -> Bench:
    """A session whose active context is about `context` tokens, with pruning holding it there; `history` more
    tokens were pruned before the first step (a long conversation under a budget)."""
    sentences = max(1, (context + history) // 16)
    state = await engine.create_session({"aggregation": "full" if full else "mean"}, None)
    sid = state.session_id
    await engine.append_message(sid, "user", SENTENCE * sentences)
    await engine.append_message(sid, "user", "Go on.")
    if history:
        await engine.update_settings(sid, {"max_context_tokens": context})  # Open prunes the history away
    opened = await engine.open(sid, "bench")
    positions = np.asarray(opened.context.positions, dtype=np.int64)
    await engine.update_settings(sid, {"max_context_tokens": len(positions)})
    return Bench(engine, sid, "bench", 0, positions, AttentionModel(context))


def frame_bytes(bench: Bench, full: bool) -> bytes:
    if full:
        tensor = bench.attention.full(bench.positions, LAYERS, HEADS)
        message = pb.Frame(step=bench.step, token_id=28, full_attention=tensor.tobytes(), layers=LAYERS, heads=HEADS)
    else:
        message = pb.Frame(step=bench.step, token_id=28, attention=bench.attention.row(bench.positions))
    return message.SerializeToString()


async def brightness_per_step(redis: Redis, bench: Bench, steps: int) -> float:
    """Positions per brightness event over the session's last `steps` steps (0 for a step that sent none)."""
    entries = await redis.xrevrange(keys.events_stream(bench.session_id), count=steps * 4)
    sizes = [
        len(orjson.loads(fields[b"data"])["positions"]) for _, fields in entries if fields[b"type"] == b"brightness"
    ]
    return sum(sizes[:steps]) / steps


async def timed_steps(bench: Bench, full: bool, steps: int) -> list[float]:
    samples = []
    for _ in range(steps):
        raw = frame_bytes(bench, full)
        started = time.perf_counter()
        frame = convert.frame_from_pb(pb.Frame.FromString(raw))
        outcome = await bench.engine.frame(bench.session_id, bench.job_id, frame)
        samples.append(time.perf_counter() - started)
        bench.step += 1
        bench.advance(outcome.position, outcome.evict_positions)
    return samples


# ---- the baseline: one hash field per token ------------------------------------------------------------------------


async def prepare_naive(redis: Redis, context: int) -> str:
    key = f"bench:naive:{context}"
    await redis.delete(key)
    await redis.hset(key, mapping={str(p): "0.0" for p in range(context)})  # type: ignore[misc]
    return key


async def naive_step(redis: Redis, key: str, model: AttentionModel) -> float:
    """Read every token's score, update with the same math, write every field back, append the event."""
    started = time.perf_counter()
    raw = await redis.hgetall(key)  # type: ignore[misc]
    positions = np.fromiter((int(k) for k in raw), dtype=np.int64, count=len(raw))
    scores = np.fromiter((float(v) for v in raw.values()), dtype=np.float64, count=len(raw))
    order = np.argsort(positions)
    attention = model.row(positions[order])
    new = scoring.step_scores(
        scores[order],
        positions[order],
        attention,
        boost=1.0,
        distance_mode="logarithmic",
        min_distance=20,
        distance_scale=10.0,
        decay_mode="additive",
        decay_rate=0.003,
    )
    async with redis.pipeline(transaction=True) as pipe:
        pipe.hset(key, mapping={str(int(p)): repr(float(s)) for p, s in zip(positions[order], new, strict=True)})
        pipe.xadd(keys.events_stream("naive"), {"type": "brightness", "data": json.dumps({"n": len(new)})})
        await pipe.execute()
    return time.perf_counter() - started
