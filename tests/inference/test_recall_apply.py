"""The worker's side of recall on bad or missing data (services/inference/recall.py), on the real engine: what the
cold tier lost is recomputed, what is already hot is skipped, ids that disagree are recomputed, and a re-insertion
that cannot be done falls back to rebuilding the tracker's context. None of it fails the reply."""

from __future__ import annotations

import pytest
import torch
from haloweave.tracker.v1 import tracker_pb2

from services.inference.engine import Engine, EngineConfig, SessionCache
from services.inference.recall import Recall

from .engine_support import prompt_ids

pytestmark = pytest.mark.slow
SENTENCE = list(range(10, 17))


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine(EngineConfig(threads=2))


def pruned(engine: Engine) -> tuple[SessionCache, list[torch.Tensor], list[int]]:
    """A prompt's cache with one sentence evicted to the cold tier; the layers as they were before, and its ids."""
    ids = prompt_ids(engine)
    cache = engine.new_cache()
    engine.prefill(cache, ids, list(range(len(ids))), capture=None)
    before = [t.clone() for layer in cache.layers for t in (layer.keys, layer.values) if t is not None]
    engine.evict(cache, SENTENCE, cold=True)
    return cache, before, [ids[p] for p in SENTENCE]


def answer(positions: list[int], ids: list[int], evict: list[int] | None = None) -> tracker_pb2.Recalled:
    return tracker_pb2.Recalled(positions=positions, token_ids=ids, evict_positions=evict or [])


def test_a_recall_puts_back_exactly_and_feeds_the_last_token_again(engine: Engine) -> None:
    cache, before, ids = pruned(engine)
    last = (cache.token_ids[-1], cache.positions[-1])
    feed_ids, feed_positions, rebuilt = Recall(engine, 1 << 30).apply(cache, answer(SENTENCE, ids))
    assert (feed_ids, feed_positions, rebuilt) == ([last[0]], [last[1]], False)
    engine.decode(cache, last[0], last[1], capture=None)  # what the conversation feeds next
    after = [t for layer in cache.layers for t in (layer.keys, layer.values) if t is not None]
    # Every entry but the last is the one evicted or kept, bit for bit; the last was computed again, as one decode
    # step rather than inside the prompt's prefill (another kernel: the same values up to rounding).
    assert all(torch.equal(a[:, :, :-1], b[:, :, :-1]) for a, b in zip(after, before, strict=True))
    assert all(torch.allclose(a[:, :, -1], b[:, :, -1], atol=1e-4) for a, b in zip(after, before, strict=True))


def test_entries_the_cold_tier_lost_are_recomputed(engine: Engine) -> None:
    cache, before, ids = pruned(engine)
    cache.cold.clear()  # lost: a worker restart, a budget
    Recall(engine, 1 << 30).apply(cache, answer(SENTENCE, ids))
    assert set(SENTENCE) <= set(cache.positions) and cache.positions == sorted(cache.positions)
    index = [cache.positions.index(p) for p in SENTENCE]
    # The recomputed keys of layer 0 depend on the token and its position alone: exact there.
    torch.testing.assert_close(cache.layers[0].keys[:, :, index], before[0][:, :, SENTENCE])  # type: ignore[index]


def test_cold_entries_whose_ids_disagree_with_the_dictionary_are_recomputed(engine: Engine) -> None:
    cache, _, ids = pruned(engine)
    wrong = [(t + 1) % engine.vocab_size for t in ids]
    Recall(engine, 1 << 30).apply(cache, answer(SENTENCE, wrong))
    assert [cache.token_ids[cache.positions.index(p)] for p in SENTENCE] == wrong  # the dictionary's ids win


def test_positions_already_in_the_cache_are_skipped(engine: Engine) -> None:
    cache, _, ids = pruned(engine)
    held = cache.positions[:3]
    _, _, rebuilt = Recall(engine, 1 << 30).apply(cache, answer([*held, *SENTENCE], [0, 0, 0, *ids]))
    assert not rebuilt and len(set(cache.positions)) == len(cache.positions)
    assert set(SENTENCE) <= set(cache.positions)


def test_a_recall_that_cannot_be_applied_rebuilds_the_trackers_context(engine: Engine) -> None:
    cache, _, ids = pruned(engine)
    context = dict(zip(cache.positions, cache.token_ids, strict=True))
    feed_ids, feed_positions, rebuilt = Recall(engine, 1 << 30).apply(
        cache,
        answer(SENTENCE, ids, evict=[999_999]),  # not in the cache: the eviction is refused
    )
    assert rebuilt and len(cache) == 0
    context.update(zip(SENTENCE, ids, strict=True))
    assert feed_positions == sorted(context) and feed_ids == [context[p] for p in feed_positions]


def test_missing_cold_entries_are_recomputed_for_the_probe_within_the_budget(engine: Engine) -> None:
    """A worker that took the session over holds no cold tier: the Open's deleted entries are recomputed before
    scoring, newest first, as far as the cold budget goes; the rest are marked dropped and not tried again."""
    cache, _, ids = pruned(engine)
    cache.cold.clear()
    recall = Recall(engine, cold_budget_bytes=3 * engine.kv_bytes_per_token)
    recall.enabled = True
    recall.opened(cache, SENTENCE, ids, probe_positions=[cache.positions[-2]])
    index = recall.probe(cache, cache.positions[-4:])
    assert index == (2,)
    recall._recompute_missing(cache)
    assert cache.cold.positions() == SENTENCE[-3:] and cache.cold.dropped == set(SENTENCE[:-3])
    assert all(chunk.recomputed for chunk in cache.cold.chunks)
