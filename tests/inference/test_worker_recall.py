"""Recall end to end: a worker in-process with the real model, a real tracker process and Redis. A fact pruned in an
earlier turn comes back when a later question attends to it: the tracker's context and the worker's cache agree
after it, and the cold tier survives a snapshot and restore, and a worker taking the session over."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from services.common import settings_wire
from services.inference.worker import Worker

from .conftest import Chat
from .test_worker_generate import cache_matches_context

pytestmark = pytest.mark.slow

FACT = "My locker code is 4711."
FILLER = [
    "Tell me one thing about spring weather.",
    "Name a colour of the sea.",
    "Say something kind about cats.",
]
QUESTION = "What is my locker code?"


async def pruned_fact(chat: Chat) -> str:
    """A session whose budget has pruned sentences of earlier turns (the fact among them) before the question."""
    session = await chat.session(max_new_tokens=3, recall=True)
    await chat.turn(session, FACT)
    for text in FILLER:
        await chat.turn(session, text)
    context = await chat.context(session)
    await chat.tracker.UpdateSettings(_settings(session, max_context_tokens=len(context.positions) - 20))
    return session


def _settings(session: str, **values: Any) -> Any:
    from haloweave.tracker.v1 import tracker_pb2

    return tracker_pb2.UpdateSettingsRequest(session_id=session, settings=settings_wire.to_pb(**values))


def recalled(frames: list[dict]) -> list[dict]:
    return [f for f in frames if f["type"] == "recalled"]


async def test_a_pruned_sentence_comes_back_for_the_question(chat: Chat, start_worker) -> None:
    handle = await start_worker()
    session = await pruned_fact(chat)
    frames = await chat.turn(session, QUESTION)
    assert frames[-1]["type"] == "done", frames
    back = recalled(frames)
    assert back, [f["type"] for f in frames]
    pruned_before = {p for f in await chat.events(session) if f["type"] == "pruned" for p in f["positions"]}
    assert all(set(f["positions"]) <= pruned_before for f in back)  # only what was pruned comes back
    worker: Worker = handle.worker
    cache_matches_context(worker, session, await chat.context(session))
    cache = worker.sessions.get(session)
    assert cache is not None and len(cache.cold) > 0
    active = set((await chat.context(session)).positions)
    assert not (cache.cold.held() & active)  # nothing is both cold and hot
    # The reply's first token was sampled after the re-insertion: its brightness covers the recalled positions.
    first = next(f for f in frames if f["type"] == "brightness")
    assert set(back[0]["positions"]) & set(first["positions"])


async def test_the_cold_tier_survives_a_snapshot_and_restore_on_another_worker(
    chat: Chat, start_worker, snapshot_addr: str
) -> None:
    first = await start_worker("w-a", snapshot_addr=snapshot_addr)
    session = await pruned_fact(chat)
    await chat.turn(session, QUESTION)
    job_id = await chat.enqueue(session, job_type="snapshot")
    assert await chat.job_done(job_id) == "ok"
    saved = next(f for f in await chat.events(session) if f["type"] == "snapshot_saved")
    cache = first.worker.sessions.get(session)
    assert cache is not None
    cold = cache.cold.all()
    assert cold is not None and len(cold.positions) > 0
    await first.shutdown()

    second = await start_worker("w-b", snapshot_addr=snapshot_addr)
    job_id = await chat.enqueue(session, job_type="restore", snapshot_id=saved["snapshot_id"])
    assert await chat.job_done(job_id) == "ok"
    restored = second.worker.sessions.get(session)
    assert restored is not None
    back = restored.cold.all()
    assert back is not None and back.positions == cold.positions and back.token_ids == cold.token_ids
    assert torch.equal(back.kv, cold.kv) and not back.recomputed
    frames = await chat.turn(session, "And what was my locker code again?")
    assert frames[-1]["type"] == "done", frames
    assert not any(c.recomputed for c in restored.cold.chunks)  # scored from what the snapshot carried
    cache_matches_context(second.worker, session, await chat.context(session))


async def test_a_worker_that_takes_a_session_over_recomputes_its_cold_tier(chat: Chat, start_worker) -> None:
    first = await start_worker("w-a")
    session = await pruned_fact(chat)
    await first.shutdown()  # its caches, cold tiers included, are gone with it (no snapshot service to offload to)

    second = await start_worker("w-b")
    frames = await chat.turn(session, QUESTION)
    assert frames[-1]["type"] == "done", frames
    cache = second.worker.sessions.get(session)
    assert cache is not None
    assert any(c.recomputed for c in cache.cold.chunks)  # rebuilt from the dictionary's ids at their positions
    assert recalled(frames)
    cache_matches_context(second.worker, session, await chat.context(session))


async def test_an_offloaded_session_comes_back_with_its_cold_tier(chat: Chat, start_worker, snapshot_addr: str) -> None:
    handle = await start_worker(snapshot_addr=snapshot_addr, kv_budget_bytes=1)  # room for one session only
    worker: Worker = handle.worker
    session = await pruned_fact(chat)
    await chat.turn(session, QUESTION)
    cache = worker.sessions.get(session)
    assert cache is not None
    cold = cache.cold.all()
    assert cold is not None
    other = await chat.session(max_new_tokens=3)
    await chat.turn(other, "Hello.")
    assert session not in worker.sessions and worker.stats.offloads >= 1
    frames = await chat.turn(session, "Thanks. And my locker code, once more?")
    assert frames[-1]["type"] == "done", frames
    back = worker.sessions.get(session)
    assert back is not None and worker.stats.restores >= 1
    assert not any(chunk.recomputed for chunk in back.cold.chunks)  # the offload carried it; nothing recomputed
    assert set(cold.positions) - set((await chat.context(session)).positions) <= back.cold.held()
