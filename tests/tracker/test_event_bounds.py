"""The tracker's commits keep the session's event Stream within its bounds (services.common.events), on a real Redis."""

from __future__ import annotations

import numpy as np
from redis.asyncio import Redis

from services.common import events, keys
from services.common.events import StreamLimits
from services.tracker.engine import Engine
from services.tracker.frames import FrameInput
from services.tracker.store import Store
from services.tracker.template import ChatTemplate


async def test_steps_trim_the_oldest_events_to_the_byte_budget(redis: Redis, template: ChatTemplate) -> None:
    bounds = StreamLimits(max_events=100_000, max_bytes=24 * 1024)
    store = Store(redis, bounds)
    engine = Engine(store, template, "smollm2-135m-instruct", "test")
    try:
        sid = (await engine.create_session({}, None)).session_id
        await engine.append_message(sid, "user", "The quick brown fox jumps over the lazy dog. " * 40)
        opened = await engine.open(sid, "j")
        n = len(opened.context.positions)
        rng = np.random.default_rng(0)
        for step in range(60):  # every step changes every score: a brightness event over the whole context
            outcome = await engine.frame(sid, "j", FrameInput(step, 5, rng.random(n + step, dtype=np.float32)))
            assert outcome.position == opened.context.positions[-1] + step + 1
        last = int(await redis.get(keys.events_counter(sid)) or 0)
        entries = await redis.xrange(keys.events_stream(sid))
        ids = [events.entry_event_id(entry_id) for entry_id, _ in entries]
        assert ids == list(range(last - len(ids) + 1, last + 1)), "the newest events, gap-free"
        assert ids[0] > 1, "the prompt's token events were trimmed"
        counted = sum(len(f[b"type"]) + len(f[b"data"]) + events.ENTRY_OVERHEAD_BYTES for _, f in entries)
        assert counted == int(await redis.get(keys.events_bytes(sid)) or 0) <= bounds.max_bytes
        # The session itself is whole: the trimmed events were only the record of how it got here.
        _, tokens = await engine.export(sid)
        assert len(tokens) == opened.context.positions[-1] + 61
    finally:
        await store.aclose()
