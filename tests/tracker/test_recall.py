"""Recall on the real tracker engine and Redis: which pruned sentences come back, how they are scored and protected,
what the audit trail keeps, and probes that cannot be used changing nothing."""

from __future__ import annotations

import numpy as np
import pytest
from redis.asyncio import Redis

from services.common.errors import InvalidArgument
from services.tracker import recall
from services.tracker.engine import Engine, RecallProbe
from services.tracker.frames import FrameInput
from services.tracker.state import SessionState

from .conftest import EngineFactory, read_events

SENTENCES = "Alpha one. Bravo two. Charlie three. Delta four. Echo five. Foxtrot six."


async def pruned_session(engine: Engine, **settings: object) -> tuple[str, int]:
    """A session whose older user turn lost its first sentences when the reply to a new question was opened (all
    scores are 0, so the oldest go first); returns (session id, active count after the Open)."""
    sid = (await engine.create_session({"recall": True, **settings}, "Sys.")).session_id
    await engine.append_message(sid, "user", SENTENCES)
    await engine.open(sid, "j0")
    await engine.finish(sid, "j0", "eos", {})
    await engine.append_message(sid, "user", "Which word came with five?")
    state = await engine.session(sid)
    await engine.update_settings(sid, {"max_context_tokens": state.active_count() - 8})  # header adds 3 more
    opened = await engine.open(sid, "j1")
    assert opened.pruned is not None and opened.pruned.positions  # recall on: the deleted tokens come with Open
    return sid, len(opened.context.positions)


def sentences(state: SessionState, turn: int) -> dict[int, np.ndarray]:
    a = state.arrays
    entries = np.flatnonzero(a["turn"] == turn)
    return {int(k): entries[a["gsent"][entries] == k] for k in np.unique(a["gsent"][entries])}


def probe(state: SessionState, cold: dict[int, float], active: float = 0.01) -> RecallProbe:
    """Every deleted entry probed (those of the sentences in `cold` at that score, the rest at 0), every active one
    at `active`."""
    a = state.arrays
    gone = np.flatnonzero(a["deleted"])
    scores = np.array([cold.get(int(k), 0.0) for k in a["gsent"][gone]])
    return RecallProbe(a["pos"][gone].astype(np.int64), scores, np.full(state.active_count(), active))


async def test_a_sentence_the_query_attends_to_comes_back_scored_and_protected(
    make_engine: EngineFactory, redis: Redis
) -> None:
    engine = await make_engine()
    sid, active = await pruned_session(engine)
    state = await engine.session(sid)
    budget = state.settings.max_context_tokens
    deleted_keys = sorted({int(k) for k in state.arrays["gsent"][state.arrays["deleted"].astype(bool)]})
    wanted = deleted_keys[0]
    outcome = await engine.recall(sid, "j1", probe(state, {wanted: 0.5}))
    after = await engine.session(sid)
    members = sentences(after, 1)[wanted]
    assert outcome.positions == after.arrays["pos"][members].tolist()
    assert outcome.token_ids == after.arrays["tid"][members].tolist()
    assert not after.arrays["deleted"][members].any()
    assert np.all(after.arrays["score"][members] > 0)  # one update from the attention it was given
    assert after.active_count() <= budget  # pruning ran after the recall
    assert outcome.evict_positions and not set(outcome.evict_positions) & set(outcome.positions)
    assert after.meta.recalled_tokens == len(members) and after.meta.recalled_sentences == 1
    # The audit trail keeps both events, and the recalled sentence's event says where it was.
    kinds = [e for e in await read_events(redis, sid) if e["type"] in ("pruned", "recalled")]
    recalled = [e for e in kinds if e["type"] == "recalled"]
    assert len(recalled) == 1 and recalled[0]["positions"] == outcome.positions
    assert recalled[0]["turn_id"] == 1 and len(recalled[0]["scores"]) == len(members)
    assert any(e["type"] == "pruned" and set(e["positions"]) == set(outcome.positions) for e in kinds)
    # Protected while this reply runs: frames that would prune keep it; the reply's end lifts the protection.
    await engine.update_settings(sid, {"max_context_tokens": after.active_count()})
    for step in range(3):
        current = await engine.session(sid)
        await engine.frame(sid, "j1", FrameInput(step, 5, np.zeros(current.active_count(), dtype=np.float32)))
    during = await engine.session(sid)
    assert not during.arrays["deleted"][members].any()
    await engine.finish(sid, "j1", "eos", {})
    assert (await engine.session(sid)).meta.recalled_keys == ""
    del active


async def test_nothing_comes_back_below_the_dimmest_active_sentence(make_engine: EngineFactory) -> None:
    engine = await make_engine()
    sid, _ = await pruned_session(engine)
    state = await engine.session(sid)
    key = int(state.arrays["gsent"][np.flatnonzero(state.arrays["deleted"])[0]])
    outcome = await engine.recall(sid, "j1", probe(state, {key: 0.005}, active=0.01))
    assert outcome.positions == [] and outcome.evict_positions == []
    assert (await engine.session(sid)).arrays["deleted"].sum() == state.arrays["deleted"].sum()


async def test_at_most_recall_max_sentences_come_back(make_engine: EngineFactory) -> None:
    engine = await make_engine()
    sid, _ = await pruned_session(engine, recall_max_sentences=1)
    state = await engine.session(sid)
    keys = sorted({int(k) for k in state.arrays["gsent"][state.arrays["deleted"].astype(bool)]})
    assert len(keys) >= 2
    outcome = await engine.recall(sid, "j1", probe(state, {k: 0.2 + 0.1 * i for i, k in enumerate(keys)}))
    assert outcome.sentences == 1
    after = await engine.session(sid)
    assert after.meta.recalled_keys == str(keys[-1])  # the best one


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda p: RecallProbe(p.cold_positions, p.cold_scores[:-1], p.active_scores), "cold positions but"),
        (lambda p: RecallProbe(p.cold_positions, p.cold_scores, p.active_scores[:-1]), "active scores for"),
        (lambda p: RecallProbe(p.cold_positions, p.cold_scores * np.nan, p.active_scores), "finite"),
        (lambda p: RecallProbe(p.cold_positions[::-1].copy(), p.cold_scores, p.active_scores), "ascend"),
    ],
)
async def test_an_unusable_probe_changes_nothing_and_says_why(
    make_engine: EngineFactory, change: object, reason: str
) -> None:
    engine = await make_engine()
    sid, _ = await pruned_session(engine)
    state = await engine.session(sid)
    key = int(state.arrays["gsent"][np.flatnonzero(state.arrays["deleted"])[0]])
    outcome = await engine.recall(sid, "j1", change(probe(state, {key: 0.9})))  # type: ignore[operator]
    assert reason in outcome.refused and outcome.positions == []
    after = await engine.session(sid)
    assert np.array_equal(after.arrays["deleted"], state.arrays["deleted"]) and after.meta == state.meta


async def test_positions_that_were_never_pruned_are_ignored(make_engine: EngineFactory) -> None:
    engine = await make_engine()
    sid, _ = await pruned_session(engine)
    state = await engine.session(sid)
    active_position = int(state.arrays["pos"][state.active_index()[0]])
    bogus = RecallProbe(np.array([active_position, 10**9]), np.array([0.9, 0.9]), np.full(state.active_count(), 0.01))
    outcome = await engine.recall(sid, "j1", bogus)
    assert outcome.positions == [] and "2 probed positions are not pruned entries" in outcome.refused


async def test_recall_off_refuses_the_probe(make_engine: EngineFactory) -> None:
    engine = await make_engine()
    sid, _ = await pruned_session(engine)
    await engine.update_settings(sid, {"recall": False})
    state = await engine.session(sid)
    outcome = await engine.recall(sid, "j1", probe(state, {}))
    assert outcome.refused == "recall is off"
    with pytest.raises(InvalidArgument, match="recall_max_sentences"):
        await engine.update_settings(sid, {"recall_max_sentences": 0})


def test_choose_takes_the_best_that_fit() -> None:
    found = recall.Candidates(np.array([1, 2, 3]), np.array([0.5, 0.9, 0.7]), np.array([10, 30, 5]))
    assert recall.choose(found, threshold=0.4, room=20, limit=4) == [2, 0]  # 2 (30 tokens) does not fit
    assert recall.choose(found, threshold=0.6, room=100, limit=4) == [1, 2]
    assert recall.choose(found, threshold=0.6, room=100, limit=1) == [1]


async def test_the_room_is_made_from_the_sentences_the_query_attends_to_least(make_engine: EngineFactory) -> None:
    engine = await make_engine()
    sid, _ = await pruned_session(engine)
    state = await engine.session(sid)
    a = state.arrays
    active = state.active_index()
    older = [k for k, m in sentences(state, 1).items() if not a["deleted"][m].any()]
    assert len(older) >= 2
    weakest = older[-1]  # the newest of the older turn's active sentences: not the oldest, so not a tie-break
    scores = np.where(a["gsent"][active] == weakest, 0.001, 0.05)
    key = int(a["gsent"][np.flatnonzero(a["deleted"])[0]])
    gone = np.flatnonzero(a["deleted"])
    cold = np.where(a["gsent"][gone] == key, 0.5, 0.0)
    outcome = await engine.recall(sid, "j1", RecallProbe(a["pos"][gone].astype(np.int64), cold, scores))
    assert outcome.positions
    evicted = set(outcome.evict_positions)
    assert set(a["pos"][sentences(state, 1)[weakest]].tolist()) <= evicted


async def test_a_recalled_sentence_can_be_pruned_again(make_engine: EngineFactory, redis: Redis) -> None:
    engine = await make_engine()
    sid, _ = await pruned_session(engine, prune_policy="recency")
    state = await engine.session(sid)
    oldest = int(state.arrays["gsent"][np.flatnonzero(state.arrays["deleted"])[0]])
    outcome = await engine.recall(sid, "j1", probe(state, {oldest: 0.5}))
    assert outcome.positions
    await engine.finish(sid, "j1", "eos", {})
    await engine.append_message(sid, "user", "And the next question?")
    await engine.open(sid, "j2")  # recency: the oldest prunable sentence, the recalled one, goes first again
    after = await engine.session(sid)
    members = np.searchsorted(after.arrays["pos"], outcome.positions)
    assert after.arrays["deleted"][members].all()
    events = await read_events(redis, sid)
    again = [e for e in events if e["type"] == "pruned" and set(e["positions"]) == set(outcome.positions)]
    assert len(again) == 2  # pruned, recalled, pruned: the audit trail keeps all three
