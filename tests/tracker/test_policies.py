"""Pruning policies on the real engine and Redis: what each one scores, what it prunes first, what it never prunes."""

from __future__ import annotations

import numpy as np
import pytest

from services.common.errors import InvalidArgument
from services.tracker import policies
from services.tracker.engine import Engine
from services.tracker.frames import FrameInput
from services.tracker.settings import PRUNE_POLICIES, Settings
from services.tracker.state import SessionState

from .conftest import EngineFactory

SENTENCES = "Alpha one. Bravo two. Charlie three. Delta four. Echo five. Foxtrot six."


async def conversation(engine: Engine, policy: str) -> tuple[str, int]:
    """A session of the given policy with an older user message of several sentences and a latest question, opened
    for a reply; returns (session id, context length)."""
    sid = (await engine.create_session({"prune_policy": policy}, "Sys.")).session_id
    await engine.append_message(sid, "user", SENTENCES)
    await engine.append_message(sid, "user", "Latest question?")
    opened = await engine.open(sid, "j")
    return sid, len(opened.context.positions)


def prunable_sentences(state: SessionState) -> dict[int, np.ndarray]:
    """The older user turn's sentences: key -> entry indices."""
    a = state.arrays
    older = np.flatnonzero(a["turn"] == 1)
    return {int(k): older[a["gsent"][older] == k] for k in np.unique(a["gsent"][older])}


def pruned_keys(state: SessionState) -> list[int]:
    deleted = state.arrays["deleted"].astype(bool)
    return sorted({int(k) for k in state.arrays["gsent"][deleted]})


async def two_steps(engine: Engine, sid: str, n: int, first: np.ndarray, second: np.ndarray) -> SessionState:
    """Frame 0 and frame 1 with the given attention over the context; the budget makes the second frame prune
    exactly one token's worth (one sentence)."""
    await engine.frame(sid, "j", FrameInput(0, 5, first))
    await engine.update_settings(sid, {"max_context_tokens": n + 1})
    await engine.frame(sid, "j", FrameInput(1, 5, second))
    return await engine.session(sid)


def attention_on(state: SessionState, n: int, weights: dict[int, float], rest: float) -> np.ndarray:
    """A row over the first n active entries: `weights` per sentence key of the older turn, `rest` elsewhere."""
    row = np.full(n, rest, dtype=np.float32)
    for key, members in prunable_sentences(state).items():
        if key in weights:
            row[members] = weights[key]
    return row


@pytest.mark.parametrize("policy", ["h2o", "tova", "brightness"])
async def test_attention_policies_score_and_prune_by_their_rule(make_engine: EngineFactory, policy: str) -> None:
    engine = await make_engine()
    sid, n = await conversation(engine, policy)
    if policy == "brightness":  # its own settings, made plain: accumulate with no decay and no distance weighting
        await engine.update_settings(sid, {"distance_mode": "none", "decay_mode": "none"})
    state = await engine.session(sid)
    keys = sorted(prunable_sentences(state))
    a, b = keys[2], keys[4]
    # Sentence a is attended to once, strongly, then not at all; b moderately, only at the latest step.
    first = attention_on(state, n, {a: 0.9, b: 0.0}, rest=0.7)
    second = np.append(attention_on(state, n, {a: 0.0, b: 0.5}, rest=0.7), np.float32(0.7))
    state = await two_steps(engine, sid, n, first, second)
    scores = state.arrays["score"]
    members = prunable_sentences(state)
    if policy == "tova":  # the latest step's attention only
        assert scores[members[a]].tolist() == [0.0] * len(members[a])
        assert np.allclose(scores[members[b]], 0.5)
        assert pruned_keys(state) == [a]
    else:  # accumulated: a holds 0.9, b 0.5
        assert np.allclose(scores[members[a]], 0.9) and np.allclose(scores[members[b]], 0.5)
        assert pruned_keys(state) == [b]


async def test_h2o_and_tova_ignore_the_sessions_scoring_settings(make_engine: EngineFactory) -> None:
    engine = await make_engine()
    for policy, expected in (("h2o", 2 * 0.25), ("tova", 0.25)):
        sid, n = await conversation(engine, policy)
        await engine.update_settings(sid, {"boost": 3.0, "decay_rate": 0.2, "min_distance": 1000})
        await engine.frame(sid, "j", FrameInput(0, 5, np.full(n, 0.25, dtype=np.float32)))
        await engine.frame(sid, "j", FrameInput(1, 5, np.full(n + 1, 0.25, dtype=np.float32)))
        state = await engine.session(sid)
        assert np.allclose(state.arrays["score"][:n], expected), policy


async def test_recency_prunes_the_oldest_prunable_sentence_whatever_the_attention(make_engine: EngineFactory) -> None:
    engine = await make_engine()
    sid, n = await conversation(engine, "recency")
    state = await engine.session(sid)
    keys = sorted(prunable_sentences(state))
    # The oldest sentence is the brightest by far: recency prunes it anyway.
    row = attention_on(state, n, {keys[0]: 1.0}, rest=0.01)
    state = await two_steps(engine, sid, n, row, np.append(row, np.float32(0.0)))
    assert pruned_keys(state) == [keys[0]]


async def test_random_is_seeded_per_session_and_followed(make_engine: EngineFactory) -> None:
    engine = await make_engine()
    sid, n = await conversation(engine, "random")
    state = await engine.session(sid)
    keys = np.array(sorted(prunable_sentences(state)), dtype=np.int64)
    settings = state.settings
    order = policies.priorities(settings, sid, keys, np.zeros(len(keys)))
    assert np.array_equal(order, policies.priorities(settings, sid, keys, np.ones(len(keys))))  # scores unused
    assert ((order >= 0) & (order < 1)).all() and len(set(order.tolist())) == len(keys)
    others = [policies.priorities(settings, f"{sid}-{i}", keys, order) for i in range(4)]
    assert any(not np.array_equal(np.argsort(o), np.argsort(order)) for o in others)  # another session, another order
    reseeded = policies.priorities(Settings(prune_policy="random", seed=1), sid, keys, order)
    assert not np.array_equal(reseeded, order)
    row = np.full(n, 0.5, dtype=np.float32)
    state = await two_steps(engine, sid, n, row, np.append(row, np.float32(0.5)))
    assert pruned_keys(state) == [int(keys[np.argmin(order)])]


@pytest.mark.parametrize("policy", PRUNE_POLICIES)
async def test_every_policy_keeps_the_same_protections(make_engine: EngineFactory, policy: str) -> None:
    engine = await make_engine()
    sid, n = await conversation(engine, policy)
    await engine.frame(sid, "j", FrameInput(0, 5, np.linspace(0.01, 1, n, dtype=np.float32)))
    state = await engine.session(sid)
    protected = int(np.isin(state.arrays["turn"], [0, 2, 3]).sum())  # system, latest user, the reply
    await engine.update_settings(sid, {"max_context_tokens": protected})
    await engine.frame(sid, "j", FrameInput(1, 5, np.full(n + 1, 0.5, dtype=np.float32)))
    state = await engine.session(sid)
    deleted = state.arrays["deleted"].astype(bool)
    assert set(state.arrays["turn"][deleted].tolist()) == {1}  # the older message, and nothing else
    assert state.active_count() <= protected + 1  # the token this frame appended is the reply's too


async def test_unknown_policy_and_budget_below_the_protected_tokens_are_refused(make_engine: EngineFactory) -> None:
    engine = await make_engine()
    sid, _ = await conversation(engine, "brightness")
    before = await engine.session(sid)
    with pytest.raises(InvalidArgument, match=r"settings\.prune_policy: 'lru' is not one of"):
        await engine.update_settings(sid, {"prune_policy": "lru"})
    protected = int(np.isin(before.arrays["turn"], [0, 2, 3]).sum())
    with pytest.raises(InvalidArgument, match=f"below the {protected} tokens that are never pruned"):
        await engine.update_settings(sid, {"max_context_tokens": protected - 1})
    after = await engine.session(sid)
    assert after.settings == before.settings and after.meta.version == before.meta.version
    await engine.update_settings(sid, {"max_context_tokens": protected})  # exactly the protected part is allowed
    with pytest.raises(InvalidArgument, match="max_context_tokens"):
        await engine.create_session({"max_context_tokens": 2}, "A system prompt longer than two tokens.")
