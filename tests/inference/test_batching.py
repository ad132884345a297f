"""Continuous batching with the real model: conversations of different lengths in one forward get the tokens and
attention rows they get alone, including one pruned mid-reply and one in `full` mode; and bad input fails only its
own conversation."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from haloweave.tracker.v1 import tracker_pb2

from services.common import settings_wire
from services.common.errors import InvalidArgument, Overloaded
from services.inference.batcher import Batcher
from services.inference.conversation import Conversation
from services.inference.engine import Engine
from services.inference.reply import LocalPeer
from services.inference.scheduler import Limits

from .engine_support import converse, template_ids

pytestmark = pytest.mark.slow

FACTS = "The lighthouse keeper counts ships. The tide comes in twice a day. "


def chat_ids(engine: Engine, text: str) -> list[int]:
    return template_ids(engine, [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": text}])


def peers(engine: Engine) -> list[LocalPeer]:
    """Five conversations of 30 to ~300 tokens; the second is pruned in place after step 2, the third ships `full`
    rows, the fifth is pruned after step 4 in reprefill mode (rebuilt in chunks while the others decode)."""
    prompts = [
        chat_ids(engine, "Name a colour."),
        chat_ids(engine, FACTS * 3 + "What does the keeper count?"),
        chat_ids(engine, FACTS + "Say something about the tide."),
        chat_ids(engine, FACTS * 12 + "Summarise that."),
        chat_ids(engine, FACTS * 2 + "Tell me about ships."),
    ]
    modes = ("mean", "max", "full", "mean", "weighted_layers")
    settings = [settings_wire.to_pb(max_new_tokens=12, aggregation=mode) for mode in modes]
    pruned = list(range(20, 32))  # a stretch of the prompt, gone from the cache after the step
    prunes: list[dict[int, list[int]] | None] = [None, {2: pruned}, None, None, {4: pruned}]
    return [
        LocalPeer(ids, settings=s, evictions=prune, reprefill=i == 4)
        for i, (ids, s, prune) in enumerate(zip(prompts, settings, prunes, strict=True))
    ]


def rows(peer: LocalPeer) -> list[np.ndarray]:
    out = []
    for frame in peer.frames:
        if frame.full_attention:
            full = np.frombuffer(frame.full_attention, dtype="<f2").astype(np.float32)
            out.append(full.reshape(frame.layers, frame.heads, -1))
        else:
            out.append(np.asarray(frame.attention, dtype=np.float32))
    return out


def test_a_conversation_in_a_batch_gets_what_it_gets_alone(worker_engine: Engine) -> None:
    alone_peers, batch_peers = peers(worker_engine), peers(worker_engine)
    alone = [asyncio.run(converse(worker_engine, [peer]))[0] for peer in alone_peers]
    together = asyncio.run(converse(worker_engine, batch_peers, prefill_chunk_tokens=64, max_step_tokens=64))
    for i, (a, b) in enumerate(zip(alone, together, strict=True)):
        assert b.text_ids == a.text_ids, f"conversation {i}"
        assert b.cache.positions == a.cache.positions
        assert len(rows(batch_peers[i])) == len(rows(alone_peers[i])) == 12
        assert b.stats.rebuilt == (i == 4)
        for step, (x, y) in enumerate(zip(rows(alone_peers[i]), rows(batch_peers[i]), strict=True)):
            assert x.shape == y.shape, (i, step)
            # fp32 rows to 1e-5; `full` travels as fp16, so there one fp16 step of difference is allowed
            tolerance = 1e-3 if x.ndim == 3 else 1e-5
            assert float(np.abs(x - y).max()) <= tolerance, (i, step)
    for i, step in ((1, 2), (4, 4)):
        assert not set(range(20, 32)) & set(together[i].cache.positions)
        assert rows(batch_peers[i])[step + 1].shape[0] == rows(batch_peers[i])[step].shape[0] + 1 - 12


async def test_a_long_prompt_is_fed_in_chunks_while_the_others_decode(worker_engine: Engine) -> None:
    batcher = Batcher(worker_engine, Limits(prefill_chunk_tokens=32, max_step_tokens=32))
    short = Conversation(worker_engine, worker_engine.new_cache(), LocalPeer(chat_ids(worker_engine, "Hi.")), "a", "1")
    long_ids = chat_ids(worker_engine, FACTS * 8)
    long = Conversation(worker_engine, worker_engine.new_cache(), LocalPeer(long_ids), "b", "2")

    sizes = []
    for c in (short, long):
        await c.open(batcher.thread)
        batcher.scheduler.add(c)
    while long.stats.tokens == 0:
        scheduled = batcher.scheduler.schedule()
        sizes.append(sum(len(e.token_ids) for _, e in scheduled))
        await batcher.step(scheduled)
    assert max(sizes) <= 32
    assert len(sizes) >= len(long_ids) // 32
    assert short.stats.tokens >= len(sizes) - 1, "the short conversation decoded at every step of the long prefill"


async def test_a_bad_directive_fails_only_its_own_conversation(worker_engine: Engine) -> None:
    good = LocalPeer(chat_ids(worker_engine, "Name a colour."), settings=settings_wire.to_pb(max_new_tokens=6))
    bad = LocalPeer(chat_ids(worker_engine, "Name a fruit."), evictions={1: [99_999]})

    async def run() -> tuple[BaseException | Conversation, ...]:
        batcher = Batcher(worker_engine, Limits())
        stop = asyncio.Event()
        loop = asyncio.create_task(batcher.run(stop))
        conversations = [
            Conversation(worker_engine, worker_engine.new_cache(), p, f"s{i}", "j") for i, p in enumerate((good, bad))
        ]
        results = await asyncio.gather(*(batcher.generate(c) for c in conversations), return_exceptions=True)
        stop.set()
        await loop
        return tuple(r if isinstance(r, BaseException) else c for r, c in zip(results, conversations, strict=True))

    ok, failed = await run()
    assert isinstance(ok, Conversation) and ok.stats.reason == "length" and len(ok.text_ids) == 6
    assert isinstance(failed, InvalidArgument) and "99999" in failed.message
    assert bad.failed is not None and bad.failed[0] == "invalid_argument"


async def test_settings_that_are_invalid_mid_reply_fail_only_their_conversation(worker_engine: Engine) -> None:
    broken = tracker_pb2.Settings(json='{"top_p": 0.0}')  # out of range: refused when the Directive brings it
    good = LocalPeer(chat_ids(worker_engine, "Name a colour."), settings=settings_wire.to_pb(max_new_tokens=5))
    bad = LocalPeer(chat_ids(worker_engine, "Name a fruit."), changes={1: broken})
    batcher = Batcher(worker_engine, Limits())
    stop = asyncio.Event()
    loop = asyncio.create_task(batcher.run(stop))
    ok, failed = (
        Conversation(worker_engine, worker_engine.new_cache(), p, f"s{i}", "j") for i, p in enumerate((good, bad))
    )
    results = await asyncio.gather(batcher.generate(ok), batcher.generate(failed), return_exceptions=True)
    stop.set()
    await loop
    assert not isinstance(results[0], BaseException) and len(ok.text_ids) == 5
    assert isinstance(results[1], InvalidArgument) and "top_p" in results[1].message
    assert bad.failed is not None and len(bad.frames) == 2


async def test_a_full_worker_refuses_with_overloaded(worker_engine: Engine) -> None:
    async def run() -> None:
        batcher = Batcher(worker_engine, Limits(max_running=1, max_waiting=1, prefill_chunk_tokens=8))
        ids = chat_ids(worker_engine, "Hi.")
        replies = [
            Conversation(worker_engine, worker_engine.new_cache(), LocalPeer(ids), f"s{i}", "j") for i in range(3)
        ]
        # No step loop runs: the first two stay queued, one running and one waiting.
        tasks = [asyncio.create_task(batcher.generate(c)) for c in replies[:2]]
        while len(batcher.scheduler) < 2:
            await asyncio.sleep(0.01)
        with pytest.raises(Overloaded, match="try again"):
            await batcher.generate(replies[2])
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    await run()
