"""The engine against a real Redis: the dictionary, a generation, events, refusals that change nothing, replicas."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from redis.asyncio import Redis

from services.common.errors import AlreadyExists, DataLoss, FailedPrecondition, InvalidArgument, NotFound
from services.tracker.dictionary import BRIGHTNESS_MAX_POSITIONS
from services.tracker.engine import Engine
from services.tracker.frames import FrameInput
from services.tracker.state import SessionState
from services.tracker.store import STAGE_BYTES, Store, array_key, meta_key, stage_key

from .conftest import EngineFactory, read_events


def vector(n: int, value: float = 0.0) -> np.ndarray:
    return np.full(n, value, dtype=np.float32)


async def assert_stored_as_held(redis: Redis, held: SessionState) -> None:
    """What Redis holds for the session, loaded afresh, equals the state a replica keeps after its commit."""
    stored = await Store(redis).load(held.session_id)
    for name, values in held.arrays.items():
        np.testing.assert_array_equal(stored.arrays[name], values, err_msg=name)


async def dictionary(engine: Engine, session_id: str) -> list[tuple]:
    _, tokens = await engine.export(session_id)
    return [(t.position, t.token_id, t.attention_score, t.turn_id, t.sentence_id, t.role, t.deleted) for t in tokens]


async def test_create_and_append_build_the_dictionary(make_engine: EngineFactory, redis: Redis) -> None:
    engine = await make_engine()
    state = await engine.create_session({}, None)
    sid = state.session_id
    system_count = state.size
    assert state.arrays["pos"].tolist() == list(range(system_count))
    turn, first, last = await engine.append_message(sid, "user", "Hello there. How are you?")
    assert (turn, first) == (1, system_count)
    state, tokens = await engine.export(sid)
    user = [t for t in tokens if t.turn_id == 1]
    assert [t.position for t in user] == list(range(first, last + 1))
    # Sentences: the header, "Hello there.", " How are you?", then the trailer "<|im_end|>\n" on its own.
    text_by_sentence: dict[int, str] = {}
    for t in user:
        text_by_sentence[t.sentence_id] = text_by_sentence.get(t.sentence_id, "") + t.token
    assert text_by_sentence == {0: "<|im_start|>user\n", 1: "Hello there.", 2: " How are you?", 3: "<|im_end|>\n"}
    events = await read_events(redis, sid)
    token_events = [e for e in events if e["type"] == "token"]
    assert len(token_events) == state.size
    assert token_events[-1] == {
        "type": "token",
        "event_id": events[-1]["event_id"],
        "position": last,
        "token": "\n",
        "token_id": tokens[-1].token_id,
        "role": "user",
        "turn_id": 1,
        "sentence_id": 3,
        "score": 0.0,
    }
    assert [e["event_id"] for e in events] == list(range(1, len(events) + 1))


async def test_unknown_session_and_bad_messages_are_refused(make_engine: EngineFactory) -> None:
    engine = await make_engine()
    with pytest.raises(NotFound):
        await engine.append_message("nope", "user", "hi")
    sid = (await engine.create_session({}, None)).session_id
    before = await dictionary(engine, sid)
    with pytest.raises(InvalidArgument, match="role"):
        await engine.append_message(sid, "tool", "hi")
    with pytest.raises(InvalidArgument, match="empty"):
        await engine.append_message(sid, "user", "")
    with pytest.raises(InvalidArgument, match=r"settings\.decay_rate"):
        await engine.update_settings(sid, {"decay_rate": math.nan})
    with pytest.raises(InvalidArgument, match=r"settings\.top_p"):
        await engine.update_settings(sid, {"top_p": 0.0})
    assert await dictionary(engine, sid) == before


async def test_a_generation_scores_appends_and_closes(make_engine: EngineFactory, redis: Redis) -> None:
    engine = await make_engine()
    created = await engine.create_session({"min_distance": 0, "distance_mode": "none", "decay_rate": 0.5}, "Be brief.")
    sid_ = created.session_id
    await engine.append_message(sid_, "user", "Hi!")
    opened = await engine.open(sid_, "job-1")
    positions = opened.context.positions
    assert positions == list(range(opened.context.next_position))
    n = len(positions)
    attention = np.linspace(0, 1, n, dtype=np.float32)
    outcome = await engine.frame(sid_, "job-1", FrameInput(0, 42, attention))
    assert outcome.position == n and outcome.evict_positions == [] and not outcome.cancel
    state = await engine.session(sid_)
    # additive: max(0, 0 + 1 * 1 * a - 0.5) for the old tokens; the new token starts at the initial score 0.
    expected = np.maximum(0.0, attention.astype(np.float64) - 0.5)
    assert np.allclose(state.arrays["score"][:n], expected)
    assert state.arrays["score"][n] == 0.0
    with pytest.raises(FailedPrecondition):
        await engine.append_message(sid_, "user", "too early")
    await engine.frame(sid_, "job-1", FrameInput(1, 2, vector(n + 1, 0.1)))  # 2 = <|im_end|>
    turn = await engine.finish(sid_, "job-1", "eos", {"tokens": 2})
    state, tokens = await engine.export(sid_)
    reply = [t.token for t in tokens if t.turn_id == turn]
    assert reply[-2:] == ["<|im_end|>", "\n"]  # the model's own end token, then only the newline
    events = await read_events(redis, sid_)
    done = [e for e in events if e["type"] == "done"]
    assert done[0]["turn_id"] == turn and done[0]["stats"]["reason"] == "eos"
    assert done[0]["stats"]["active_tokens"] == state.size
    brightness = [e for e in events if e["type"] == "brightness"]
    assert brightness[0]["step"] == 0 and len(brightness[0]["positions"]) == len(brightness[0]["scores"])
    assert not (await engine.session(sid_)).generating
    # Only the sampled tokens carry their step: the header and trailer around them do not.
    turn_tokens = [e for e in events if e["type"] == "token" and e["turn_id"] == turn]
    assert [e["token_id"] for e in turn_tokens if "step" in e] == [42, 2]
    assert [e["step"] for e in turn_tokens if "step" in e] == [0, 1]
    assert "step" not in turn_tokens[0] and "step" not in turn_tokens[-1]


async def test_an_assistant_message_is_rendered_as_a_reply(make_engine: EngineFactory) -> None:
    """A conversation sent whole (the OpenAI API) appends the earlier replies as assistant turns."""
    engine = await make_engine()
    sid = (await engine.create_session({}, "S.")).session_id
    await engine.append_message(sid, "user", "Hi.")
    turn, first, last = await engine.append_message(sid, "assistant", "Hello.")
    _state, tokens = await engine.export(sid)
    reply = [t for t in tokens if t.turn_id == turn]
    assert {t.role for t in reply} == {"assistant"} and reply[0].position == first and reply[-1].position == last
    assert "".join(t.token for t in reply) == engine.template.render("assistant", "Hello.")
    assert not (await engine.session(sid)).generating


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        (FrameInput(0, 5, vector(3)), "expected"),
        (FrameInput(0, 5, np.array([math.nan] * 9, dtype=np.float32)), "NaN"),
        (FrameInput(1, 5, vector(0)), "out of order"),
        (FrameInput(0, -1, vector(0)), "vocabulary"),
        (FrameInput(0, 5, vector(0), full=b"\x00\x00", layers=1, heads=1), "bytes"),
    ],
)
async def test_invalid_frames_change_nothing(
    make_engine: EngineFactory, redis: Redis, frame: FrameInput, message: str
) -> None:
    engine = await make_engine()
    sid = (await engine.create_session({}, "S.")).session_id
    await engine.append_message(sid, "user", "U.")
    opened = await engine.open(sid, "j")
    n = len(opened.context.positions)
    if frame.attention.size == 9:  # sized to the context: the values are what is wrong
        frame = FrameInput(0, 5, np.array([1.0] * (n - 1) + [math.nan], dtype=np.float32))
    before = await dictionary(engine, sid)
    events_before = await read_events(redis, sid)
    with pytest.raises(InvalidArgument, match=message):
        await engine.frame(sid, "j", frame)
    for bad in (math.inf, -0.5):
        with pytest.raises(InvalidArgument):
            await engine.frame(sid, "j", FrameInput(0, 5, np.array([0.1] * (n - 1) + [bad], dtype=np.float32)))
    assert await dictionary(engine, sid) == before
    assert await read_events(redis, sid) == events_before
    # The stream can go on with a valid frame afterwards.
    assert (await engine.frame(sid, "j", FrameInput(0, 5, vector(n, 0.1)))).position == n


async def test_full_frames_are_reduced_with_the_mean_and_shown(make_engine: EngineFactory, redis: Redis) -> None:
    engine = await make_engine()
    changes = {"aggregation": "full", "distance_mode": "none", "decay_rate": 0.0}
    sid = (await engine.create_session(changes, "")).session_id
    opened = await engine.open(sid, "j")
    n = len(opened.context.positions)
    tensor = np.random.default_rng(0).random((2, 3, n)).astype("<f2")
    await engine.frame(sid, "j", FrameInput(0, 5, vector(0), tensor.tobytes(), 2, 3))
    state = await engine.session(sid)
    assert np.allclose(state.arrays["score"][:n], tensor.astype(np.float32).mean(axis=(0, 1)), atol=1e-6)
    attention = [e for e in await read_events(redis, sid) if e["type"] == "attention"]
    assert attention[0]["layers"] == 2 and attention[0]["heads"] == 3
    assert attention[0]["positions"] == opened.context.positions


async def test_pruning_respects_budget_protections_and_modes(make_engine: EngineFactory, redis: Redis) -> None:
    engine = await make_engine()
    sid = (await engine.create_session({"decay_mode": "none"}, "Sys.")).session_id
    await engine.append_message(sid, "user", "One. Two. Three. Four.")
    await engine.append_message(sid, "user", "Latest question?")
    opened = await engine.open(sid, "j")
    n = len(opened.context.positions)
    state = await engine.session(sid)
    # Make the first user turn's sentences distinguishable: attention rises with position.
    await engine.update_settings(sid, {"max_context_tokens": n - 3, "min_distance": 0, "distance_mode": "none"})
    outcome = await engine.frame(sid, "j", FrameInput(0, 5, np.linspace(0.01, 1, n, dtype=np.float32)))
    state = await engine.session(sid)
    assert state.active_count() <= n - 3
    deleted = state.arrays["deleted"].astype(bool)
    assert set(state.arrays["turn"][deleted].tolist()) == {1}  # only the older user turn was prunable
    assert outcome.evict_positions == state.arrays["pos"][deleted].tolist()
    pruned = [e for e in await read_events(redis, sid) if e["type"] == "pruned"]
    assert pruned[0]["turn_id"] == 1 and pruned[0]["sentence_id"] == 0  # the dimmest (oldest) sentence first
    # Reprefill mode answers with the surviving context instead of evictions.
    await engine.update_settings(sid, {"prune_mode": "reprefill", "max_context_tokens": state.active_count() - 1})
    outcome = await engine.frame(sid, "j", FrameInput(1, 5, vector(state.active_count(), 0.5)))
    assert outcome.reprefill and outcome.evict_positions == [] and outcome.context is not None
    assert outcome.context.positions == (await engine.context(sid)).positions


async def test_cancel_and_settings_reach_the_next_step(make_engine: EngineFactory) -> None:
    engine = await make_engine()
    sid = (await engine.create_session({}, "")).session_id
    opened = await engine.open(sid, "j")
    n = len(opened.context.positions)
    first = await engine.frame(sid, "j", FrameInput(0, 5, vector(n)))
    await engine.update_settings(sid, {"boost": 2.0})
    await engine.cancel(sid)
    second = await engine.frame(sid, "j", FrameInput(1, 5, vector(n + 1)))
    assert not first.cancel and second.cancel
    assert second.settings.boost == 2.0 and second.settings_version == first.settings_version + 1


async def test_replicas_alternating_equal_one_replica(make_engine: EngineFactory) -> None:
    async def conversation(engines: list[Engine]) -> list[tuple]:
        pick = iter(engines * 100)
        sid = (await next(pick).create_session({"max_context_tokens": 40}, "Sys.")).session_id
        for turn in range(3):
            await next(pick).append_message(sid, "user", f"Question {turn}. It has two sentences!")
            opened = await next(pick).open(sid, f"job{turn}")
            n = len(opened.context.positions)
            for step in range(6):
                await next(pick).update_settings(sid, {"boost": 1.0 + step})
                values = np.random.default_rng(step).random(n).astype(np.float32)
                outcome = await next(pick).frame(sid, f"job{turn}", FrameInput(step, 13 + step, values))
                n = n + 1 - outcome.pruned_tokens
            await next(pick).finish(sid, f"job{turn}", "length", {})
        rows = await dictionary(engines[0], sid)
        return [row for row in rows]

    one = await make_engine()
    single = await conversation([one])
    alternating = await conversation([await make_engine(), await make_engine()])
    assert single == alternating
    assert any(row[-1] for row in single)  # pruning happened


async def test_a_stale_commit_is_refused_whole(make_engine: EngineFactory, redis: Redis) -> None:
    engine = await make_engine()
    sid = (await engine.create_session({}, "")).session_id
    state = await engine.session(sid)
    draft_a, draft_b = state.draft(), state.draft()
    draft_a.state.meta.turns += 5
    draft_b.emit("token", {"x": 1})
    store = Store(redis)
    assert await store.commit(draft_a) is not None
    events_before = await read_events(redis, sid)
    assert await store.commit(draft_b) is None
    assert await read_events(redis, sid) == events_before
    assert (await engine.session(sid)).meta.turns == state.meta.turns + 5


async def test_a_finished_job_cannot_open_again(make_engine: EngineFactory) -> None:
    engine = await make_engine()
    sid = (await engine.create_session({}, "Hi.")).session_id
    await engine.open(sid, "job-1")
    await engine.finish(sid, "job-1", "length", {})
    await engine.open(sid, "job-2")
    await engine.fail(sid, "job-2", "internal", "broke")
    for job in ("job-1", "job-2"):
        with pytest.raises(AlreadyExists, match=job):
            await (await make_engine()).open(sid, job)
    await engine.open(sid, "job-3")  # a new job opens as usual


async def test_a_reply_whose_streams_all_went_silent_is_closed_by_the_next_message(
    make_engine: EngineFactory, redis: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No stream end was recorded (the replica that held the stream was killed): after the silence the next message
    closes the reply as abandoned, naming its job, and that job can never open it again."""
    from services.tracker import engine as engine_module

    engine = await make_engine()
    sid = (await engine.create_session({}, "Hi.")).session_id
    await engine.append_message(sid, "user", "Hello?")
    await engine.open(sid, "job-silent")
    with pytest.raises(FailedPrecondition, match="generating"):
        await engine.append_message(sid, "user", "Anyone?")
    monkeypatch.setattr(engine_module, "SILENT_REPLY_S", 0.0)
    await engine.append_message(sid, "user", "Anyone?")
    errors = [e for e in await read_events(redis, sid) if e["type"] == "error"]
    assert [(e["code"], e["job_id"]) for e in errors] == [("aborted", "job-silent")]
    with pytest.raises(AlreadyExists):
        await engine.open(sid, "job-silent")


async def test_another_replica_reads_the_model_and_fingerprint(make_engine: EngineFactory) -> None:
    sid = (await (await make_engine()).create_session({}, "Hi.")).session_id
    state = await (await make_engine()).session(sid)
    assert (state.meta.model, state.meta.fingerprint) == ("smollm2-135m-instruct", "test")


async def test_a_new_replica_continues_positions_and_restore_never_rewinds(make_engine: EngineFactory) -> None:
    first = await make_engine()
    sid = (await first.create_session({}, "Hi.")).session_id
    exported_state, exported = await first.export(sid)
    await first.append_message(sid, "user", "More words here.")
    restarted = await make_engine()
    _, _, last = await restarted.append_message(sid, "user", "After restart.")
    await restarted.restore(sid, exported_state.settings, exported, exported_state.meta.next_position)
    assert [t.position for t in (await restarted.export(sid))[1]] == [t.position for t in exported]
    turn, first_pos, _ = await restarted.append_message(sid, "user", "After restore.")
    assert first_pos == last + 1 and turn == 1
    broken = list(reversed(exported))
    with pytest.raises(InvalidArgument, match="increasing"):
        await restarted.restore(sid, exported_state.settings, broken, 0)


async def test_brightness_events_are_bounded_and_reach_every_position(make_engine: EngineFactory, redis: Redis) -> None:
    engine = await make_engine()
    sid = (await engine.create_session({"distance_mode": "none", "decay_rate": 0.0}, "")).session_id
    await engine.append_message(sid, "user", "Word " * 1500)
    opened = await engine.open(sid, "j")
    n = len(opened.context.positions)
    assert n > 1100
    half = BRIGHTNESS_MAX_POSITIONS // 2
    steps = -(-n // half) + 1
    for step in range(steps):
        await engine.frame(sid, "j", FrameInput(step, 5, vector(n + step, 0.01)))
    batches = [e for e in await read_events(redis, sid) if e["type"] == "brightness"]
    assert len(batches) == steps and all(len(b["positions"]) <= BRIGHTNESS_MAX_POSITIONS for b in batches)
    seen = {p for b in batches for p in b["positions"]}
    assert set(opened.context.positions) <= seen
    final = await engine.session(sid)
    last = batches[-1]
    index = {int(p): i for i, p in enumerate(final.arrays["pos"])}
    for position, score in zip(last["positions"], last["scores"], strict=True):
        assert score == round(float(final.arrays["score"][index[position]]), 6)


async def test_large_rewrites_are_staged_and_dropped_on_conflict(make_engine: EngineFactory, redis: Redis) -> None:
    engine = await make_engine()
    sid = (await engine.create_session({}, "")).session_id
    await engine.append_message(sid, "user", "Word " * 2500)
    state = await engine.session(sid)
    assert state.size * 8 >= STAGE_BYTES  # the score array goes through a staging key
    draft_a, draft_b = state.draft(), state.draft()
    draft_a.set_array("score", np.full(state.size, 1.5))
    draft_b.set_array("score", np.full(state.size, 2.5))
    store = Store(redis)
    assert await store.commit(draft_a) is not None
    assert await store.commit(draft_b) is None
    stored = await engine.session(sid)
    assert (stored.arrays["score"] == 1.5).all()
    assert await redis.keys(stage_key(sid, "*")) == []
    await redis.script_flush()  # as after a Redis restart: the script is loaded again
    draft_c = stored.draft()
    draft_c.set_array("score", np.full(state.size, 3.5))
    assert await store.commit(draft_c) is not None
    assert ((await engine.session(sid)).arrays["score"] == 3.5).all()


async def test_commits_survive_the_server_closing_their_connections(make_engine: EngineFactory, redis: Redis) -> None:
    """As after a Redis restart: the idle commit connections are dead; the next commit opens a new one, once."""
    engine = await make_engine()
    sid = (await engine.create_session({}, "")).session_id
    await engine.append_message(sid, "user", "Before.")
    idle = engine.store._idle  # the store's commit connections, to close from the server's side
    assert idle
    for pipe in idle:
        host, port = pipe._transport.get_extra_info("sockname")[:2]  # type: ignore[union-attr]
        await redis.client_kill_filter(addr=f"{host}:{port}")
    _, first, last = await engine.append_message(sid, "user", "After.")
    state = await engine.session(sid)
    assert state.arrays["pos"][-1] == last and last >= first


async def _five_sentences_opened(engine: Engine) -> tuple[str, int]:
    """A session with five short sentences and a question, its reply opened: (session id, active count)."""
    sid = (await engine.create_session({"decay_mode": "none", "distance_mode": "none"}, "Sys.")).session_id
    await engine.append_message(sid, "user", "Alpha one. Bravo two. Charlie three. Delta four. Echo five.")
    await engine.append_message(sid, "user", "Latest question?")
    opened = await engine.open(sid, "j")
    return sid, len(opened.context.positions)


async def test_pruned_flags_are_written_in_place_exactly(make_engine: EngineFactory, redis: Redis) -> None:
    """A prune overwrites only the pruned entries' flags in Redis: what is stored equals what the replica holds."""
    engine = await make_engine()
    sid, n = await _five_sentences_opened(engine)
    attention = np.full(n, 0.5, dtype=np.float32)
    attention[n // 4 : n // 4 + 4] = 0.0  # two dim stretches apart: pruned sentences in separate runs
    attention[n // 2 : n // 2 + 4] = 0.0
    await engine.update_settings(sid, {"max_context_tokens": n - 6})
    outcome = await engine.frame(sid, "j", FrameInput(0, 5, attention))
    assert outcome.pruned_sentences >= 2
    held = engine._cache[sid]  # the replica's state after its commit
    await assert_stored_as_held(redis, held)


async def test_pruning_a_sentence_restored_partly_deleted_writes_each_entry(
    make_engine: EngineFactory, redis: Redis
) -> None:
    """An edited export may hold a sentence with some entries deleted: its remaining entries are not one range."""
    engine = await make_engine()
    sid = (await engine.create_session({"decay_mode": "none"}, "Sys.")).session_id
    await engine.append_message(sid, "user", "Alpha one two three. Bravo four five six.")
    await engine.append_message(sid, "user", "Latest question?")
    state, tokens = await engine.export(sid)
    first_sentence = [i for i, t in enumerate(tokens) if t.turn_id == 1 and t.sentence_id == 0]
    assert len(first_sentence) >= 3
    middle = first_sentence[1]
    tokens[middle] = dataclasses.replace(tokens[middle], deleted=True)
    await engine.restore(sid, state.settings, tokens, state.meta.next_position)
    # Every score is 0 (decay none, nothing scored yet): the oldest prunable sentence, the partly deleted one, goes
    # first.
    active = (await engine.session(sid)).active_count()
    await engine.update_settings(sid, {"max_context_tokens": active - 1})
    opened = await engine.open(sid, "j")
    assert opened.pruned_sentences >= 1  # the header Open appends adds to the excess
    held = engine._cache[sid]
    assert held.arrays["deleted"][first_sentence].all()
    await assert_stored_as_held(redis, held)


async def _long_history(engine: Engine, budget: int) -> tuple[str, int]:
    """A session whose budget pruned most of a long message: (session id, active count after Open)."""
    sid = (await engine.create_session({"decay_mode": "none", "distance_mode": "none"}, "Sys.")).session_id
    await engine.append_message(sid, "user", "One more short sentence here. " * 400)
    await engine.append_message(sid, "user", "Latest question?")
    await engine.update_settings(sid, {"max_context_tokens": budget})
    opened = await engine.open(sid, "j")
    return sid, len(opened.context.positions)


async def test_a_step_writes_the_active_scores_not_the_whole_history(make_engine: EngineFactory, redis: Redis) -> None:
    """Per-step bytes follow the active context: a long-pruned conversation does not rewrite every score it had."""
    engine = await make_engine()
    sid, active = await _long_history(engine, budget=300)
    state = await engine.session(sid)
    assert state.size > 8 * active  # most of the dictionary is pruned history
    sent: list[int] = []
    send = engine.store._send_commit

    async def measured(staged: list[tuple[str, bytes]], all_keys: tuple[bytes, ...], argv: list) -> int:
        sent.append(sum(len(blob) for _, blob in staged) + sum(len(a) for a in argv if isinstance(a, bytes)))
        return await send(staged, all_keys, argv)

    engine.store._send_commit = measured  # type: ignore[method-assign]
    for step in range(5):
        n = (await engine.session(sid)).active_count()
        await engine.frame(sid, "j", FrameInput(step, 5, vector(n, 1.0 / n)))
    # The live scores (8 bytes per active entry) and the events; the whole score column would be 8 * state.size.
    assert max(sent) < 8 * (active + 8) + 16 * 1024 < 8 * state.size
    held = engine._cache[sid]
    # The active index is carried over appends, not recomputed: it must still be what the flags say.
    np.testing.assert_array_equal(held.active_index(), np.flatnonzero(held.arrays["deleted"] == 0))
    await assert_stored_as_held(redis, held)


async def test_pruned_entries_keep_their_final_score_in_the_score_column(
    make_engine: EngineFactory, redis: Redis
) -> None:
    engine = await make_engine()
    sid, n = await _five_sentences_opened(engine)
    await engine.frame(sid, "j", FrameInput(0, 5, vector(n, 0.25)))  # every active score becomes 0.25
    await engine.update_settings(sid, {"max_context_tokens": n - 4})
    outcome = await engine.frame(sid, "j", FrameInput(1, 5, vector(n + 1, 0.5)))
    assert outcome.pruned_tokens > 0
    held = engine._cache[sid]
    deleted = held.arrays["deleted"].astype(bool)
    column = np.frombuffer(await redis.get(array_key(sid, "score")), dtype="<f8")
    live = np.frombuffer(await redis.get(array_key(sid, "live")), dtype="<f8")
    np.testing.assert_array_equal(column[deleted], held.arrays["score"][deleted])  # final: 0.25 + 0.5
    assert (held.arrays["score"][deleted] == 0.75).all()
    np.testing.assert_array_equal(live, held.arrays["score"][~deleted])


async def test_a_session_stored_before_live_scores_loads_and_moves_to_them(
    make_engine: EngineFactory, redis: Redis
) -> None:
    engine = await make_engine()
    sid, active = await _long_history(engine, budget=200)
    await engine.frame(sid, "j", FrameInput(0, 5, vector(active, 0.5)))
    held = engine._cache[sid]
    # The earlier layout: every current score in :a:score, no :a:live, no live_scores flag.
    await redis.set(array_key(sid, "score"), held.arrays["score"].tobytes())
    await redis.delete(array_key(sid, "live"))
    await redis.hdel(meta_key(sid), "live_scores")
    other = await make_engine()  # a replica with no cache
    loaded = await other.session(sid)
    np.testing.assert_array_equal(loaded.arrays["score"], held.arrays["score"])
    await other.frame(sid, "j", FrameInput(1, 5, vector(loaded.active_count(), 0.5)))
    after = other._cache[sid]
    assert after.meta.live_scores == 1
    await assert_stored_as_held(redis, after)


async def test_live_scores_that_do_not_match_the_active_entries_are_refused(
    make_engine: EngineFactory, redis: Redis
) -> None:
    engine = await make_engine()
    sid = (await engine.create_session({}, "Sys.")).session_id
    await engine.append_message(sid, "user", "Hello.")
    await redis.append(array_key(sid, "live"), b"\0" * 8)  # one score too many
    with pytest.raises(DataLoss, match="live scores"):
        await Store(redis).load(sid)
