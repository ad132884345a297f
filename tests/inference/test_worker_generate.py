"""A worker running in-process with the real model against a real tracker process and a real Redis."""

from __future__ import annotations

import pytest
from haloweave.tracker.v1 import tracker_pb2

from services.common import settings_wire
from services.common.errors import InvalidArgument
from services.inference.conversation import Conversation, sampling_params
from services.inference.engine import Engine
from services.inference.jobs import done_key
from services.inference.reply import LocalPeer
from services.inference.worker import Worker

from .conftest import Chat


def reply_of(frames: list[dict]) -> list[dict]:
    return [f for f in frames if f["type"] == "token" and f["role"] == "assistant"]


def cache_matches_context(worker: Worker, session_id: str, context: tracker_pb2.Context) -> None:
    """What the worker holds is the tracker's active context, up to the reply's trailer (fed with the next turn)."""
    cache = worker.sessions.get(session_id)
    assert cache is not None
    held = list(zip(cache.positions, cache.token_ids, strict=True))
    active = list(zip(context.positions, context.token_ids, strict=True))
    assert held == active[: len(held)]
    # The last sampled token is never fed; the trailer is `\n` after <|im_end|>, else `<|im_end|>\n`.
    assert len(active) - len(held) <= 3


async def test_a_reply_streams_tokens_brightness_and_done(chat: Chat, start_worker) -> None:
    handle = await start_worker()
    session = await chat.session(max_new_tokens=6)
    frames = await chat.turn(session, "What is the capital of France?")
    kinds = [f["type"] for f in frames]
    assert "error" not in kinds, frames
    tokens = reply_of(frames)
    assert tokens and "".join(t["token"] for t in tokens).strip()
    assert "brightness" in kinds
    done = frames[-1]
    assert done["type"] == "done" and done["stats"]["reason"] in ("eos", "length")
    assert 1 <= done["stats"]["tokens"] <= 6
    cache_matches_context(handle.worker, session, await chat.context(session))
    stats = handle.worker.stats
    assert stats.generated_tokens == done["stats"]["tokens"]
    assert stats.histograms["time_to_first_token_seconds"].counts != [0] * len(
        stats.histograms["time_to_first_token_seconds"].counts
    )
    assert stats.jobs.get(("generate", done["stats"]["reason"])) == 1


async def test_a_finished_job_run_again_adds_no_second_reply(chat: Chat, start_worker) -> None:
    """A worker that dies after the tracker finished the reply, before marking the job done: the job is taken again."""
    await start_worker()
    session = await chat.session(max_new_tokens=4)
    await chat.say(session, "Say hello.")
    job_id = await chat.enqueue(session)
    assert await chat.job_done(job_id) != "duplicate"
    before = await chat.events(session)
    await chat.redis.delete(done_key(job_id))  # as if the worker had died before its done marker
    await chat.enqueue(session, job_id=job_id)
    assert await chat.job_done(job_id) == "duplicate"
    assert await chat.events(session) == before, "no second reply, no error event"


async def test_the_cache_is_kept_between_turns_and_only_the_new_suffix_is_prefilled(
    chat: Chat, start_worker, worker_engine: Engine
) -> None:
    handle = await start_worker()
    session = await chat.session(max_new_tokens=4)
    await chat.turn(session, "Name a colour.")
    held = len(handle.worker.sessions.get(session))
    await chat.say(session, "And another one?")
    before_open = len((await chat.context(session)).positions)
    await chat.job_done(await chat.enqueue(session))
    frames = await chat.events(session)
    assert "error" not in [f["type"] for f in frames]
    last = handle.worker.last_reply
    assert last is not None and not last.rebuilt
    header = worker_engine.tokenizer.encode("<|im_start|>assistant\n", add_special_tokens=False)
    # Prefilled: turn 1's trailer, the new user message and the assistant header; nothing that was held.
    assert last.prefill_tokens == before_open + len(header) - held
    assert held > last.prefill_tokens


async def test_pruning_is_applied_in_place(chat: Chat, start_worker) -> None:
    handle = await start_worker()
    session = await chat.session(max_new_tokens=4, max_context_tokens=50, min_distance=0)
    await chat.turn(session, "Hello there. I am writing a note.")
    frames = await chat.turn(session, "Cats are nice. Dogs are loud. Tell me a fact.")
    assert frames[-1]["type"] == "done", frames
    assert any(f["type"] == "pruned" for f in frames)
    last = handle.worker.last_reply
    assert last is not None and not last.rebuilt
    cache_matches_context(handle.worker, session, await chat.context(session))


async def test_reprefill_mode_rebuilds_from_the_survivors(chat: Chat, start_worker) -> None:
    handle = await start_worker()
    session = await chat.session(max_new_tokens=4, max_context_tokens=50, min_distance=0, prune_mode="reprefill")
    await chat.turn(session, "Hello there. I am writing a note.")
    frames = await chat.turn(session, "Cats are nice. Dogs are loud. Tell me a fact.")
    assert frames[-1]["type"] == "done", frames
    assert any(f["type"] == "pruned" for f in frames)
    assert handle.worker.last_reply is not None and handle.worker.last_reply.rebuilt
    cache = handle.worker.sessions.get(session)
    assert cache is not None
    if len(cache):  # a rebuild asked for by the reply's last step is left to the next turn's sync
        cache_matches_context(handle.worker, session, await chat.context(session))
    frames = await chat.turn(session, "One more, please.")
    assert frames[-1]["type"] == "done", frames
    cache = handle.worker.sessions.get(session)
    assert cache is not None
    if len(cache):
        cache_matches_context(handle.worker, session, await chat.context(session))


async def test_bad_jobs_fail_with_an_error_event_and_the_worker_serves_on(chat: Chat, start_worker) -> None:
    handle = await start_worker()
    unknown = "no-such-session"
    job_id = await chat.enqueue(unknown)
    frames = await chat.wait_for(unknown, lambda fs: any(f["type"] == "error" for f in fs))
    error = next(f for f in frames if f["type"] == "error")
    assert error["job_id"] == job_id and error["code"] == "not_found"
    bad = await chat.enqueue(unknown, job_type="dance")
    frames = await chat.wait_for(unknown, lambda fs: any(f.get("job_id") == bad for f in fs))
    assert next(f for f in frames if f.get("job_id") == bad)["code"] == "invalid_argument"
    # The same worker still serves a real session.
    session = await chat.session(max_new_tokens=3)
    assert (await chat.turn(session, "Hi!"))[-1]["type"] == "done"
    assert handle.worker.stats.jobs.get(("generate", "error")) == 1


def test_invalid_generation_settings_are_refused_by_name() -> None:
    with pytest.raises(InvalidArgument, match="top_p"):
        sampling_params(tracker_pb2.Settings(json='{"top_p": 0.0}'))
    with pytest.raises(InvalidArgument, match="max_new_tokens"):
        sampling_params(tracker_pb2.Settings(json='{"max_new_tokens": 0}'))
    params = sampling_params(settings_wire.to_pb(temperature=0.5, seed=3, stop=["."]))
    assert sampling_params(settings_wire.to_pb(clear_stop=True), params).stop == []


async def test_a_directive_for_positions_not_in_the_cache_is_refused_and_changes_nothing(worker_engine: Engine) -> None:
    cache = worker_engine.new_cache()
    worker_engine.prefill(cache, [1, 2, 3], [0, 1, 2], capture=None)
    reply = Conversation(worker_engine, cache, LocalPeer([1, 2, 3]), "s", "j")
    with pytest.raises(InvalidArgument, match="prune directive"):
        reply.apply(tracker_pb2.Directive(position=3, evict_positions=[1, 99]), finished=False)
    assert cache.positions == [0, 1, 2]


async def test_a_cancel_mid_reply_finishes_it_as_cancelled(chat: Chat, start_worker) -> None:
    await start_worker()
    session = await chat.session(max_new_tokens=200)
    job_id = await chat.start_reply(session, "Write a long poem about the sea.")
    await chat.tracker.Cancel(tracker_pb2.SessionRef(session_id=session))
    assert await chat.job_done(job_id) == "cancelled"
    done = [f for f in await chat.events(session) if f["type"] == "done"]
    assert len(done) == 1 and done[0]["stats"]["reason"] == "cancelled"
    assert done[0]["stats"]["tokens"] < 200


async def test_a_stop_string_ends_the_reply(chat: Chat, start_worker) -> None:
    await start_worker()
    session = await chat.session(max_new_tokens=40, stop=[" "])  # any second word stops it
    frames = await chat.turn(session, "Describe Paris in one sentence.")
    assert frames[-1]["type"] == "done" and frames[-1]["stats"]["reason"] == "stop"
    assert frames[-1]["stats"]["tokens"] < 40


async def test_full_mode_ships_the_whole_tensor_and_the_tracker_relays_it(chat: Chat, start_worker) -> None:
    await start_worker()
    session = await chat.session(max_new_tokens=3, aggregation="full")
    frames = await chat.turn(session, "Hi!")
    assert frames[-1]["type"] == "done", frames[-1]
    attention = [f for f in frames if f["type"] == "attention"]
    assert attention and attention[0]["layers"] == 30 and attention[0]["heads"] == 9
    assert any(f["type"] == "brightness" for f in frames)


async def test_a_mode_change_mid_reply_applies_from_the_next_step(chat: Chat, start_worker) -> None:
    await start_worker()
    session = await chat.session(max_new_tokens=200)
    job_id = await chat.start_reply(session, "Write a long poem about the sea.")
    assert not any(f["type"] == "attention" for f in await chat.events(session))
    changes = settings_wire.to_pb(aggregation="full")
    await chat.tracker.UpdateSettings(tracker_pb2.UpdateSettingsRequest(session_id=session, settings=changes))
    await chat.wait_for(session, lambda fs: any(f["type"] == "attention" for f in fs))
    await chat.tracker.Cancel(tracker_pb2.SessionRef(session_id=session))
    assert await chat.job_done(job_id) == "cancelled"
