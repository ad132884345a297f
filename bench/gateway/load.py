"""One measured run: a producer appends a token step per session at a fixed cadence; N readers receive them.

The producer plays the worker and tracker: each step it appends a `token` and a `brightness` event to every session
through `services.common.events` (the path the tracker uses), stamped with the step's wall-clock time. Readers are
either WebSocket clients of the gateway (the system under test) or direct Redis Stream readers (the baseline: the
least any relay can cost). Each reader records when every frame arrived and checks ids for loss and duplication.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field

from redis.asyncio import Redis
from websockets.asyncio.client import connect

from services.common import events, keys


@dataclass
class ReaderLog:
    arrivals: dict[int, float] = field(default_factory=dict)  # step → arrival time of its brightness frame
    stamps: dict[int, float] = field(default_factory=dict)  # step → the producer's step time
    ids: list[int] = field(default_factory=list)


@dataclass
class RunResult:
    logs: list[ReaderLog]
    expected_ids: list[list[int]]


async def produce(
    redis: Redis, sessions: list[str], steps: int, interval: float, ready: asyncio.Event
) -> list[list[int]]:
    await ready.wait()
    ids: list[list[int]] = [[] for _ in sessions]
    start = time.perf_counter()
    for step in range(steps):
        # A steady cadence like a decoding worker's, without drift.
        await asyncio.sleep(max(0.0, start + step * interval - time.perf_counter()))
        now = time.time()
        batch = [
            ("token", {"position": 100 + step, "token": " x", "token_id": 1, "role": "assistant", "turn_id": 2,
                       "sentence_id": 0, "score": 0.0}),
            ("brightness", {"step": step, "turn_id": 2, "positions": list(range(64)), "scores": [0.5] * 64, "t": now}),
        ]  # fmt: skip
        lasts = await asyncio.gather(*(events.append_events(redis, sid, batch) for sid in sessions))
        for i, last in enumerate(lasts):
            ids[i].extend([last - 1, last])
    return ids


def _record(log: ReaderLog, frame: dict) -> None:  # type: ignore[type-arg]
    log.ids.append(frame["event_id"])
    if frame["type"] == "brightness":
        log.arrivals[frame["step"]] = time.time()
        log.stamps[frame["step"]] = frame["t"]


async def read_gateway(ws_url: str, session: dict, log: ReaderLog, total: int, ready: asyncio.Barrier) -> None:  # type: ignore[type-arg]
    async with connect(ws_url, max_size=None) as ws:
        hello = {"type": "hello", "session_id": session["session_id"], "token": session["token"]}
        await ws.send(json.dumps({**hello, "last_event_id": session["last_event_id"]}))
        frame = json.loads(await ws.recv())
        assert frame["type"] == "session", frame
        await ready.wait()
        while len(log.ids) < total:
            _record(log, json.loads(await ws.recv()))


async def read_redis(redis_url: str, session: dict, log: ReaderLog, total: int, ready: asyncio.Barrier) -> None:  # type: ignore[type-arg]
    redis = Redis.from_url(redis_url)
    cursor = f"{session['last_event_id']}-0"
    stream = keys.events_stream(session["session_id"])
    try:
        await ready.wait()
        while len(log.ids) < total:
            reply = await redis.xread({stream: cursor}, count=256, block=2000)
            for _stream, entries in reply or []:
                for entry_id, fields in entries:
                    cursor = entry_id.decode()
                    _record(log, events.decode(entry_id, fields))
    finally:
        await redis.aclose()


async def new_sessions(ws_url: str, count: int) -> list[dict]:  # type: ignore[type-arg]
    sessions = []
    for _ in range(count):
        async with connect(ws_url) as ws:
            await ws.send(json.dumps({"type": "hello"}))
            frame = json.loads(await ws.recv())
            sessions.append(frame)
    return sessions


async def refresh(redis: Redis, sessions: list[dict]) -> None:  # type: ignore[type-arg]
    """Moves each session's start point to its newest event, so a run reads only its own steps."""
    for session in sessions:
        raw = await redis.get(keys.events_counter(session["session_id"]))
        session["last_event_id"] = int(raw or 0)


async def run(mode: str, ws_url: str, redis_url: str, sessions: list[dict], steps: int, interval: float) -> RunResult:  # type: ignore[type-arg]
    redis = Redis.from_url(redis_url)
    try:
        await refresh(redis, sessions)
        total = 2 * steps
        logs = [ReaderLog() for _ in sessions]
        barrier = asyncio.Barrier(len(sessions) + 1)
        go = asyncio.Event()
        if mode == "gateway":
            readers = [read_gateway(ws_url, s, log, total, barrier) for s, log in zip(sessions, logs, strict=True)]
        else:
            readers = [read_redis(redis_url, s, log, total, barrier) for s, log in zip(sessions, logs, strict=True)]
        tasks = [asyncio.create_task(r) for r in readers]
        producer = asyncio.create_task(produce(redis, [s["session_id"] for s in sessions], steps, interval, go))
        await barrier.wait()  # every reader is connected and subscribed
        go.set()
        expected = await producer
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=60)
        return RunResult(logs, expected)
    finally:
        await redis.aclose()
