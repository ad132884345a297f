"""Recall in the engine: pruned entries move to the cold tier and come back bit for bit at the slots their positions
sort to; scoring the cold tier against a query is the softmax the query would have given them in the cache."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from services.inference.engine import BatchEntry, Engine, EngineConfig, EngineInputError, SessionCache

from .engine_support import greedy, prompt_ids

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine(EngineConfig(threads=2))


def filled(engine: Engine) -> tuple[SessionCache, torch.Tensor]:
    ids = prompt_ids(engine)
    cache = engine.new_cache()
    out = engine.prefill(cache, ids, list(range(len(ids))), capture=None)
    return cache, out.logits


def layers(cache: SessionCache) -> list[torch.Tensor]:
    return [t.clone() for layer in cache.layers for t in (layer.keys, layer.values) if t is not None]


def test_prune_then_recall_is_bit_identical_and_greedy_unchanged(engine: Engine) -> None:
    cache, logits = filled(engine)
    reference, _ = filled(engine)
    before, positions, ids = layers(cache), list(cache.positions), list(cache.token_ids)
    # Two separate sentences from the middle, evicted in two directives: two cold chunks.
    first, second = list(range(10, 17)), list(range(25, 31))
    engine.evict(cache, first, cold=True)
    engine.evict(cache, second, cold=True)
    assert len(cache) == len(positions) - 13 and len(cache.cold) == 13
    assert cache.cold.positions() == first + second
    chunk = cache.cold.take(set(first + second))
    assert chunk is not None and len(cache.cold) == 0
    engine.reinsert(cache, chunk)
    assert cache.positions == positions and cache.token_ids == ids
    assert all(torch.equal(a, b) for a, b in zip(layers(cache), before, strict=True))
    assert greedy(engine, cache, logits, 6)[0] == greedy(engine, reference, logits, 6)[0]


def test_a_recalled_sentence_can_be_pruned_again_and_recalled_again(engine: Engine) -> None:
    cache, _ = filled(engine)
    before = layers(cache)
    sentence = list(range(12, 20))
    for _ in range(2):
        engine.evict(cache, sentence, cold=True)
        chunk = cache.cold.take(set(sentence))
        assert chunk is not None
        engine.reinsert(cache, chunk)
    assert all(torch.equal(a, b) for a, b in zip(layers(cache), before, strict=True))


def test_partial_recall_keeps_the_rest_cold_and_slots_in_position_order(engine: Engine) -> None:
    cache, _ = filled(engine)
    engine.evict(cache, list(range(5, 15)), cold=True)
    chunk = cache.cold.take({6, 7, 8})
    assert chunk is not None
    engine.reinsert(cache, chunk)
    assert cache.cold.positions() == [5, 9, 10, 11, 12, 13, 14]
    assert cache.positions == sorted(cache.positions) and {6, 7, 8} <= set(cache.positions)
    decoded = engine.decode(cache, 42, cache.next_position, capture="mean")
    assert decoded.attention is not None and decoded.attention.shape == (len(cache),)


def test_reinserting_a_held_position_is_refused_and_changes_nothing(engine: Engine) -> None:
    cache, _ = filled(engine)
    engine.evict(cache, [3, 4], cold=True)
    chunk = cache.cold.take({3, 4})
    assert chunk is not None
    engine.reinsert(cache, chunk)
    before = layers(cache)
    with pytest.raises(EngineInputError, match="hot cache already"):
        engine.reinsert(cache, chunk)
    assert all(torch.equal(a, b) for a, b in zip(layers(cache), before, strict=True))


def test_cold_scores_are_the_attention_the_query_gives_when_the_tokens_are_in_the_cache(engine: Engine) -> None:
    """The probe's queries over the hot and the cold keys in one softmax give exactly the row the same forward
    captured while the cold tokens were still in the cache, split in two."""
    ids = prompt_ids(engine)
    cache = engine.new_cache()
    engine.prefill(cache, ids[:-1], list(range(len(ids) - 1)), capture=None)
    out = engine.forward([BatchEntry(cache, [ids[-1]], [len(ids) - 1], capture="mean", probe=(0,))])[0]
    assert out is not None and out.probe is not None and out.attention is not None
    full_row = out.attention
    sentence = list(range(10, 17))
    engine.evict(cache, sentence, cold=True)
    scored = engine.recall_scores(cache, out.probe, "mean")
    assert scored is not None
    hot, cold_positions, cold = scored
    assert cold_positions == sentence
    joined = np.empty(len(ids), dtype=np.float32)
    joined[[p for p in range(len(ids)) if p not in sentence]] = hot
    joined[sentence] = cold
    np.testing.assert_allclose(joined, full_row, atol=1e-5)


def test_recompute_gives_keys_close_to_the_pruned_ones(engine: Engine) -> None:
    cache, _ = filled(engine)
    sentence = list(range(10, 17))
    engine.evict(cache, sentence, cold=True)
    original = cache.cold.take(set(sentence))
    assert original is not None
    again = engine.recompute(cache, original.positions, original.token_ids)
    assert again.recomputed and again.positions == sentence
    # Tokens 0..9 are all there, so the recomputation sees exactly the context they were first computed in.
    torch.testing.assert_close(again.kv, original.kv, atol=1e-4, rtol=1e-4)


def test_export_and_import_carry_the_cold_tier_bit_for_bit(engine: Engine) -> None:
    cache, _ = filled(engine)
    engine.evict(cache, list(range(10, 17)), cold=True)
    engine.evict(cache, [3, 4], cold=True)
    arrays = engine.export_cache(cache)
    assert arrays["cold.position_ids"].tolist() == [[3, 4, *range(10, 17)]]
    back = engine.import_cache(arrays)
    original, restored = cache.cold.all(), back.cold.all()
    assert original is not None and restored is not None
    assert restored.positions == original.positions and restored.token_ids == original.token_ids
    assert torch.equal(restored.kv, original.kv)
    # A cold position that is also hot is refused, like any inconsistent snapshot.
    arrays["cold.position_ids"] = arrays["cold.position_ids"].copy()
    arrays["cold.position_ids"][0, 0] = 0
    with pytest.raises(EngineInputError, match="also in the cache"):
        engine.import_cache(arrays)


def test_several_probed_queries_score_each_position_by_their_maximum(engine: Engine) -> None:
    ids = prompt_ids(engine)
    tail = 4
    scored = []
    for probe in ((0,), (1,), (2,), (0, 1, 2)):
        cache = engine.new_cache()
        engine.prefill(cache, ids[:-tail], list(range(len(ids) - tail)), capture=None)
        entry = BatchEntry(cache, ids[-tail:], list(range(len(ids) - tail, len(ids))), capture="max", probe=probe)
        out = engine.forward([entry])[0]
        assert out is not None and out.probe is not None
        assert out.probe.queries[0].shape == (engine.num_heads, len(probe), engine.head_dim)
        engine.evict(cache, list(range(10, 17)), cold=True)
        result = engine.recall_scores(cache, out.probe, "max")
        assert result is not None
        scored.append(np.concatenate([result[0], result[2]]))
    # float32 matmuls of 1 and of 3 queries sum in different orders: a clean-clone CI run differed by 1.9e-6
    # relative (3 of 41 scores), above 1e-6; 1e-5 is still two orders below any difference between positions.
    np.testing.assert_allclose(scored[3], np.maximum.reduce(scored[:3]), rtol=1e-5)
    with pytest.raises(EngineInputError, match="probe"):
        engine.forward([BatchEntry(engine.new_cache(), [1, 2], [0, 1], capture=None, probe=(0,))])
