"""A worker on the vLLM engine, in-process, against a real tracker process and a real Redis: the chat turn, pruning
by re-prefill, batched replies, and the refusals (snapshot jobs, recall) failing their own job alone."""

from __future__ import annotations

import asyncio

from services.inference.engine_vllm import VllmEngine
from tests.inference.conftest import Chat
from tests.inference.test_worker_generate import cache_matches_context, reply_of


async def test_a_reply_streams_tokens_with_a_row_per_token(chat: Chat, start_worker) -> None:
    handle = await start_worker()
    session = await chat.session(max_new_tokens=6)
    frames = await chat.turn(session, "What is the capital of France?")
    assert frames[-1]["type"] == "done", frames
    tokens = reply_of(frames)
    assert tokens and "".join(t["token"] for t in tokens).strip()
    assert "brightness" in [f["type"] for f in frames]
    assert 1 <= frames[-1]["stats"]["tokens"] <= 6
    cache_matches_context(handle.worker, session, await chat.context(session))


async def test_pruning_re_prefills_and_the_next_turn_reuses_the_cache(
    chat: Chat, start_worker, vllm_engine: VllmEngine
) -> None:
    handle = await start_worker()
    session = await chat.session(max_new_tokens=8, max_context_tokens=60, min_distance=0)
    await chat.turn(session, "Hello there. I am writing a note about my garden.")
    frames = await chat.turn(session, "Cats are nice. Dogs are loud. Tell me a fact.")
    assert frames[-1]["type"] == "done", frames
    assert any(f["type"] == "pruned" for f in frames)
    context = await chat.context(session)
    assert len(context.positions) <= 60 + 8
    cache_matches_context(handle.worker, session, context)
    frames = await chat.turn(session, "One more, please.")
    assert frames[-1]["type"] == "done", frames


async def test_concurrent_replies_share_steps(chat: Chat, start_worker) -> None:
    handle = await start_worker(max_running=4)
    sessions = [await chat.session(max_new_tokens=12) for _ in range(3)]
    results = await asyncio.gather(*(chat.turn(s, f"Count to {i + 3}.") for i, s in enumerate(sessions)))
    for frames in results:
        assert frames[-1]["type"] == "done", frames
    sizes = handle.worker.stats.histograms["batch_size"]
    steps = sum(sizes.counts)
    assert steps > 0 and sizes.total / steps > 1, "the three replies never shared a step"


async def test_a_snapshot_job_fails_clearly_and_the_worker_serves_on(chat: Chat, start_worker) -> None:
    await start_worker()
    session = await chat.session(max_new_tokens=3)
    await chat.turn(session, "Hi!")
    job_id = await chat.enqueue(session, job_type="snapshot")
    frames = await chat.wait_for(
        session, lambda fs: any(f.get("job_id") == job_id and f["type"] == "error" for f in fs)
    )
    error = next(f for f in frames if f.get("job_id") == job_id and f["type"] == "error")
    assert error["code"] == "failed_precondition"
    assert "snapshots are not available on the vLLM engine" in error["message"]
    assert (await chat.turn(session, "Still there?"))[-1]["type"] == "done"


async def test_recall_on_fails_its_own_reply_while_another_completes(chat: Chat, start_worker) -> None:
    await start_worker(max_running=4)
    recalling = await chat.session(max_new_tokens=4, max_context_tokens=40, min_distance=0, recall=True)
    await chat.turn(recalling, "Hello there. I am writing a note about my garden. It has roses.")
    plain = await chat.session(max_new_tokens=6)
    bad, good = await asyncio.gather(
        chat.turn(recalling, "What grows in my garden?"), chat.turn(plain, "Name a fruit.")
    )
    assert good[-1]["type"] == "done", good
    assert bad[-1]["type"] == "error" and "recall is not available on the vLLM engine" in bad[-1]["message"], bad
