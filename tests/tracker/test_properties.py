"""Property tests: the fast scoring, pruning and segmentation against the plain reference, and whole conversations
through the engine (real Redis, real tokenizer) against the reference dictionary."""

from __future__ import annotations

import asyncio
import math
from typing import Any

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis.asyncio import Redis

from devstack.procs import Proc
from services.tracker import pruning, scoring, segmentation
from services.tracker.engine import Engine
from services.tracker.frames import FrameInput
from services.tracker.store import Store
from services.tracker.template import ChatTemplate

from . import reference

DISTANCE = st.sampled_from(["none", "threshold", "linear", "square_root", "logarithmic"])
DECAY = st.sampled_from(["additive", "exponential", "none"])
unit = st.floats(0.0, 1.0, allow_nan=False, width=32)

scoring_settings = st.fixed_dictionaries(
    {
        "distance_mode": DISTANCE,
        "min_distance": st.integers(0, 30),
        "distance_scale": st.floats(0.1, 50.0),
        "decay_mode": DECAY,
        "decay_rate": st.floats(0.0, 1.0),
        "boost": st.floats(0.0, 5.0),
    }
)


@settings(deadline=None)  # no timing here: a loaded CI machine must not fail the math
@given(
    scoring_settings,
    st.lists(st.tuples(st.integers(0, 3), unit, st.floats(0.0, 10.0)), min_size=1, max_size=60),
)
def test_step_scores_match_the_reference(s: dict[str, Any], rows: list[tuple[int, float, float]]) -> None:
    positions, attention, scores = [], [], []
    position = 0
    for gap, a, score in rows:
        position += gap + 1
        positions.append(position)
        attention.append(a)
        scores.append(score)
    fast = scoring.step_scores(
        np.array(scores), np.array(positions, dtype=np.int64), np.array(attention, dtype=np.float32), **s
    )
    tokens = [reference.Token(p, 0, 0, "user", sc) for p, sc in zip(positions, scores, strict=True)]
    reference.step(tokens, [float(np.float32(a)) for a in attention], s)
    expected = [t.score for t in tokens]
    assert np.allclose(fast, expected, rtol=1e-12, atol=1e-12)
    # Scores stay finite, and non-negative in every mode given non-negative inputs.
    assert np.isfinite(fast).all() and (fast >= 0).all()


@settings(deadline=None)  # no timing here: a loaded CI machine must not fail the math
@given(st.lists(st.tuples(st.integers(0, 4), st.integers(0, 3), st.sampled_from([0.0, 0.5, 1.0, 2.0])), max_size=50))
def test_pruning_matches_the_greedy_reference(spec: list[tuple[int, int, float]]) -> None:
    # spec rows: (sentence length - 1, turn, score of its tokens' max); budget derived from the total.
    tokens: list[reference.Token] = []
    keys: list[int] = []
    position = 0
    for key, (extra, turn, top) in enumerate(spec):
        for j in range(extra + 1):
            tokens.append(reference.Token(position, turn, key, "user", top if j == 0 else top / 2))
            keys.append(key)
            position += 1
    protected = {3}
    for budget in (0, 1, len(tokens) // 2, len(tokens)):
        fresh = [reference.Token(t.position, t.turn, t.sentence, t.role, t.score) for t in tokens]
        expected = [key for _, key in reference.prune(fresh, budget, protected)]
        prunable = np.array([t.turn not in protected for t in tokens], dtype=bool)
        scores = np.array([t.score for t in tokens])
        chosen = pruning.choose(len(tokens), budget, np.array(keys, dtype=np.int64), scores, prunable)
        assert chosen == expected
        remaining = len(tokens) - sum(keys.count(k) for k in chosen)
        if chosen:  # stops exactly: the last sentence was still needed
            assert remaining + keys.count(chosen[-1]) > budget
        prunable_keys = {k for k, p in zip(keys, prunable, strict=True) if p}
        assert remaining <= budget or budget == 0 or len(chosen) == len(prunable_keys)
        assert all(tokens[keys.index(k)].turn not in protected for k in chosen)


@settings(deadline=None)  # no timing here: a loaded CI machine must not fail the math
@given(st.lists(st.sampled_from(["a", " b", ".", "!", "?", "\n", "x.\n", "<|im_end|>"]), max_size=40), st.data())
def test_incremental_segmentation_equals_whole(pieces: list[str], data: st.DataObject) -> None:
    whole = segmentation.sentence_ids(pieces)
    cut = data.draw(st.integers(0, len(pieces)))
    head = segmentation.sentence_ids(pieces[:cut])
    last = (head[-1], segmentation.closes_sentence(pieces[cut - 1])) if cut else (None, False)
    tail = segmentation.sentence_ids(pieces[cut:], *last)
    assert head + tail == whole
    for i in range(1, len(pieces)):
        assert whole[i] == whole[i - 1] + int(segmentation.closes_sentence(pieces[i - 1]))


# ---- whole conversations through the engine ------------------------------------------------------------------------

SENTENCES = ["Tell me more.", "Why?", "The sky is blue!", "One two three four five.", "Ok\nsure."]

conversation = st.fixed_dictionaries(
    {
        "settings": scoring_settings,
        "budget": st.integers(0, 70),
        "turns": st.lists(
            st.tuples(
                st.lists(st.sampled_from(SENTENCES), min_size=1, max_size=3),
                st.lists(st.tuples(st.integers(1, 100), st.one_of(st.none(), scoring_settings)), max_size=5),
            ),
            min_size=1,
            max_size=3,
        ),
    }
)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(conversation)
def test_conversations_match_the_reference(
    redis_server: tuple[Proc, str], template: ChatTemplate, spec: dict[str, Any]
) -> None:
    asyncio.run(_run_conversation(redis_server[1], template, spec))


async def _run_conversation(url: str, template: ChatTemplate, spec: dict[str, Any]) -> None:
    client = Redis.from_url(url)
    try:
        engine = Engine(Store(client), template, "m", "f")
        s = dict(spec["settings"])
        # A budget below the system prompt is refused; one that later user messages outgrow is not.
        system = len(template.tokenise(template.render("system", "Sys.")).token_ids)
        budget = spec["budget"] if spec["budget"] == 0 else max(spec["budget"], system)
        sid = (await engine.create_session({**s, "max_context_tokens": budget}, "Sys.")).session_id
        ref: list[reference.Token] = []
        seen_positions: list[int] = []

        async def sync_new_entries() -> None:
            _, tokens = await engine.export(sid)
            for t in tokens[len(ref) :]:
                ref.append(reference.Token(t.position, t.turn_id, t.sentence_id, t.role, t.attention_score))

        await sync_new_entries()
        rng = np.random.default_rng(len(spec["turns"]))
        for number, (sentences, steps) in enumerate(spec["turns"]):
            await engine.append_message(sid, "user", " ".join(sentences))
            last_user = (await engine.session(sid)).meta.last_user_turn
            opened = await engine.open(sid, f"j{number}")
            await sync_new_entries()
            reference.prune(ref, budget, {last_user, opened.turn_id})
            for step, (token_id, change) in enumerate(steps):
                if change is not None:  # applies from this step on, in both
                    await engine.update_settings(sid, change)
                    s = dict(change)
                active = [t for t in ref if not t.deleted]
                attention = rng.random(len(active)).astype(np.float32)
                outcome = await engine.frame(sid, f"j{number}", FrameInput(step, token_id, attention))
                reference.step(ref, [float(a) for a in attention], s)
                assert all(outcome.position > p for p in seen_positions)
                seen_positions.append(outcome.position)
                await sync_new_entries()
                ref[-1].score = (await engine.session(sid)).settings.initial_score
                reference.prune(ref, budget, {last_user, opened.turn_id})
                await _compare(engine, sid, ref)
            await engine.finish(sid, f"j{number}", "length", {})
            await sync_new_entries()
        await _compare(engine, sid, ref)
        positions = [t.position for t in ref]
        assert positions == sorted(set(positions))  # unique and increasing: never reused
    finally:
        await client.aclose()


async def _compare(engine: Engine, sid: str, ref: list[reference.Token]) -> None:
    _, tokens = await engine.export(sid)
    assert [t.position for t in tokens] == [t.position for t in ref]
    assert [t.deleted for t in tokens] == [t.deleted for t in ref]
    for got, want in zip(tokens, ref, strict=True):
        assert math.isclose(got.attention_score, want.score, rel_tol=1e-9, abs_tol=1e-9)
        assert math.isfinite(got.attention_score) and got.attention_score >= 0
        if want.deleted:
            assert want.role != "system"


@settings(deadline=None)  # no timing here: a loaded CI machine must not fail the math
@given(
    st.sampled_from(["mean", "max", "last_layer", "weighted_layers", "full"]),
    st.integers(1, 4),
    st.integers(1, 4),
    st.integers(1, 12),
    st.data(),
)
def test_aggregation_matches_the_reference(mode: str, layers: int, heads: int, ctx: int, data: st.DataObject) -> None:
    values = data.draw(st.lists(unit, min_size=layers * heads * ctx, max_size=layers * heads * ctx))
    tensor = np.array(values, dtype="<f2").reshape(layers, heads, ctx)  # the wire format of `full` frames
    nested = tensor.astype(np.float64).tolist()
    assert np.allclose(scoring.aggregate(tensor, mode), reference.aggregate(nested, mode), rtol=1e-5, atol=1e-6)
