"""KV caches: in-place pruning keeps RoPE gaps and equals a fresh prefill of the survivors; reprefill; exact export and
import; bad input refused with nothing changed."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from services.inference.engine import Engine, EngineConfig, EngineInputError, SessionCache

from .engine_support import greedy, prompt_ids

pytestmark = pytest.mark.slow
STEPS = 8


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine(EngineConfig(threads=2))


def filled(engine: Engine) -> tuple[SessionCache, list[int], torch.Tensor]:
    ids = prompt_ids(engine)
    cache = engine.new_cache()
    out = engine.prefill(cache, ids, list(range(len(ids))), capture=None)
    return cache, ids, out.logits


def middle_positions(ids: list[int]) -> list[int]:
    # A block from the middle of the prompt: a pruned sentence leaves a gap with tokens on both sides.
    return list(range(len(ids) // 3, len(ids) // 3 + 7))


def snapshot(cache: SessionCache) -> tuple[list[int], list[int], list[torch.Tensor]]:
    tensors = [t.clone() for layer in cache.layers for t in (layer.keys, layer.values) if t is not None]
    return list(cache.positions), list(cache.token_ids), tensors


def assert_unchanged(cache: SessionCache, before: tuple[list[int], list[int], list[torch.Tensor]]) -> None:
    positions, token_ids, tensors = snapshot(cache)
    assert positions == before[0] and token_ids == before[1]
    assert all(torch.equal(a, b) for a, b in zip(tensors, before[2], strict=True))


def test_in_place_prune_equals_fresh_prefill_of_survivors(engine: Engine) -> None:
    """A trailing block is pruned (it influenced no survivor), then generation goes on past the gap it leaves:
    exactly a fresh prefill of the survivors at their own positions, and the same greedy output."""
    cache, ids, logits = filled(engine)
    decoded, logits = greedy(engine, cache, logits, 3)
    block = engine.tokenizer("Also, tell me about Berlin.")["input_ids"]
    start = cache.next_position
    block_positions = list(range(start, start + len(block)))
    engine.prefill(cache, block, block_positions, capture=None)
    before_bytes = cache.nbytes
    engine.evict(cache, block_positions)
    assert cache.token_ids == [*ids, *decoded]
    assert cache.next_position == start  # survivors' largest + 1 ...
    assert cache.nbytes == before_bytes  # compacted in place, nothing reallocated
    assert all(layer.length == len(cache) for layer in cache.layers)
    # ... but the tracker never reuses a position: the next token goes past the gap, and RoPE must see that gap.
    next_position = start + len(block)
    token = int(torch.argmax(logits))
    in_place = engine.decode(cache, token, next_position, capture=None)
    fresh = engine.new_cache()
    reference = engine.prefill(fresh, [*ids, *decoded, token], [*range(start), next_position], capture=None)
    torch.testing.assert_close(in_place.logits, reference.logits, atol=1e-3, rtol=1e-4)
    assert greedy(engine, cache, in_place.logits, STEPS)[0] == greedy(engine, fresh, reference.logits, STEPS)[0]


def test_in_place_prune_of_a_middle_sentence_keeps_the_survivors_entries(engine: Engine) -> None:
    """Pruning a middle sentence removes exactly its slots from every layer and keeps every survivor's entry."""
    cache, ids, logits = filled(engine)
    decoded, logits = greedy(engine, cache, logits, 3)
    before = [(layer.keys.clone(), layer.values.clone()) for layer in cache.layers if layer.keys is not None]
    pruned = middle_positions(ids)
    engine.evict(cache, pruned)
    kept = [p for p in range(len(ids) + 3) if p not in pruned]
    assert cache.positions == kept
    assert cache.token_ids == [[*ids, *decoded][p] for p in kept]
    assert cache.next_position == len(ids) + 3  # the gap is kept: the largest position + 1, not the length
    index = torch.tensor(kept)
    for layer, (keys, values) in zip(cache.layers, before, strict=True):
        assert torch.equal(layer.keys, keys.index_select(2, index))
        assert torch.equal(layer.values, values.index_select(2, index))
    # Generation goes on from the pruned cache at the right position, without a re-prefill.
    step = engine.decode(cache, int(torch.argmax(logits)), cache.next_position, capture="mean")
    assert step.attention is not None and step.attention.shape == (len(kept) + 1,)
    assert step.attention.sum() == pytest.approx(1.0, abs=1e-4)


def test_prune_changes_what_the_model_sees(engine: Engine) -> None:
    """Guards the test above against passing vacuously: eviction really removes context."""
    cache, ids, _ = filled(engine)
    whole = engine.decode(cache, ids[-1], cache.next_position, capture=None).logits
    cache, ids, _ = filled(engine)
    engine.evict(cache, middle_positions(ids))
    pruned = engine.decode(cache, ids[-1], cache.next_position, capture=None).logits
    assert not torch.allclose(whole, pruned, atol=1e-2)


def test_positions_must_keep_their_gaps(engine: Engine) -> None:
    """Renumbering the survivors contiguously (the model's default) gives different logits: positions matter."""
    cache, ids, _ = filled(engine)
    engine.evict(cache, middle_positions(ids))
    survivors = list(cache.token_ids)
    gapped = engine.prefill(engine.new_cache(), survivors, list(cache.positions), capture=None).logits
    contiguous = engine.prefill(engine.new_cache(), survivors, list(range(len(survivors))), capture=None).logits
    assert not torch.allclose(gapped, contiguous, atol=1e-3)


def test_rebuild_is_a_fresh_prefill_of_the_survivors(engine: Engine) -> None:
    """Reprefill mode. It differs from in-place pruning on purpose: tokens after a pruned middle sentence keep, in
    place, what their deeper layers read from it; a rebuild recomputes them without it."""
    cache, ids, logits = filled(engine)
    token = int(torch.argmax(logits))
    engine.evict(cache, middle_positions(ids))
    rebuilt = engine.new_cache()
    engine.prefill(rebuilt, ids[:3], [0, 1, 2], capture=None)  # stale content, replaced wholesale
    engine.rebuild(rebuilt, list(cache.token_ids), list(cache.positions))
    assert rebuilt.positions == cache.positions and rebuilt.token_ids == cache.token_ids
    fresh = engine.new_cache()
    engine.prefill(fresh, list(cache.token_ids), list(cache.positions), capture=None)
    for a, b in zip(rebuilt.layers, fresh.layers, strict=True):
        assert a.keys is not None and b.keys is not None and torch.equal(a.keys, b.keys)
    # Layer 0 holds each token's own projection only, so it agrees with the in-place cache; deeper layers do not.
    assert rebuilt.layers[0].keys is not None and cache.layers[0].keys is not None
    assert torch.allclose(rebuilt.layers[0].keys, cache.layers[0].keys, atol=1e-5)
    assert not torch.allclose(rebuilt.layers[-1].keys, cache.layers[-1].keys, atol=1e-2)
    r = engine.decode(rebuilt, token, rebuilt.next_position, capture=None)
    f = engine.decode(fresh, token, fresh.next_position, capture=None)
    assert torch.equal(r.logits, f.logits)
    assert greedy(engine, rebuilt, r.logits, STEPS)[0] == greedy(engine, fresh, f.logits, STEPS)[0]


def test_evicting_an_unknown_position_changes_nothing(engine: Engine) -> None:
    cache, _, _ = filled(engine)
    before = snapshot(cache)
    with pytest.raises(EngineInputError, match="position 9999"):
        engine.evict(cache, [1, 2, 9999])
    with pytest.raises(ValueError):  # the API promise: a ValueError
        engine.evict(cache, [-1])
    assert_unchanged(cache, before)
    engine.evict(cache, [])  # nothing to do
    assert_unchanged(cache, before)


@pytest.mark.parametrize(
    ("token_ids", "positions", "match"),
    [
        ([5, 6], [100], "2 token ids but 1 positions"),
        ([5, 6], [100, 100], "ascend"),
        ([5], [3], "ascend"),  # not past the cache's largest position
        ([10**7], [100], "vocabulary"),
        ([-1], [100], "vocabulary"),
        ([], [], "no tokens"),
    ],
)
def test_bad_prefill_is_refused_and_loses_nothing(
    engine: Engine, token_ids: list[int], positions: list[int], match: str
) -> None:
    cache, _, _ = filled(engine)
    before = snapshot(cache)
    with pytest.raises(EngineInputError, match=match):
        engine.prefill(cache, token_ids, positions, capture="mean")
    assert_unchanged(cache, before)


def test_failed_forward_is_undone(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    """A forward that dies half-way (here: a fault injected after layer 10) leaves the cache as it was."""
    cache, _, _ = filled(engine)
    before = snapshot(cache)
    layer = engine.model.model.layers[10]

    def fail(*args: object, **kwargs: object) -> None:
        raise RuntimeError("injected fault")

    handle = layer.register_forward_pre_hook(fail)
    try:
        with pytest.raises(RuntimeError, match="injected fault"):
            engine.decode(cache, 42, cache.next_position, capture="mean")
    finally:
        handle.remove()
    assert_unchanged(cache, before)
    assert all(layer.length == len(cache) for layer in cache.layers)


def test_export_import_is_bit_exact_and_continues_identically(engine: Engine) -> None:
    cache, ids, logits = filled(engine)
    engine.evict(cache, middle_positions(ids))  # a cache with gaps is the interesting case
    arrays = engine.export_cache(cache)
    assert set(arrays) == {"input_ids", "position_ids", "attention_mask"} | {
        f"layer.{i}.{part}" for i in range(engine.num_layers) for part in ("key", "value")
    }
    assert arrays["layer.0.key"].shape == (1, engine.num_kv_heads, len(cache), engine.head_dim)
    assert arrays["position_ids"].tolist() == [cache.positions]
    restored = engine.import_cache(arrays)
    again = engine.export_cache(restored)
    for name, array in arrays.items():
        assert again[name].dtype == array.dtype and np.array_equal(again[name], array), name
    token = int(torch.argmax(logits))
    a = engine.decode(cache, token, cache.next_position, capture="mean")
    b = engine.decode(restored, token, restored.next_position, capture="mean")
    assert torch.equal(a.logits, b.logits)
    assert a.attention is not None and b.attention is not None and np.array_equal(a.attention, b.attention)
    assert greedy(engine, cache, a.logits, STEPS)[0] == greedy(engine, restored, b.logits, STEPS)[0]


def test_an_empty_cache_round_trips(engine: Engine) -> None:
    arrays = engine.export_cache(engine.new_cache())
    assert arrays["input_ids"].shape == (1, 0)
    assert arrays["layer.0.key"].shape == (1, engine.num_kv_heads, 0, engine.head_dim)
    restored = engine.import_cache(arrays)
    assert len(restored) == 0 and restored.next_position == 0
    ids = prompt_ids(engine)
    a = engine.prefill(restored, ids, list(range(len(ids))), capture=None)
    b = engine.prefill(engine.new_cache(), ids, list(range(len(ids))), capture=None)
    assert torch.equal(a.logits, b.logits)


def _broken(arrays: dict[str, np.ndarray], how: str) -> dict[str, np.ndarray]:
    arrays = dict(arrays)
    if how == "missing layer":
        del arrays["layer.3.value"]
    elif how == "wrong shape":
        arrays["layer.0.key"] = arrays["layer.0.key"][:, :, :-1]
    elif how == "wrong dtype":
        arrays["layer.5.key"] = arrays["layer.5.key"].astype(np.float16)
    elif how == "unsorted positions":
        arrays["position_ids"] = arrays["position_ids"][:, ::-1].copy()
    elif how == "padding":
        mask = arrays["attention_mask"].copy()
        mask[0, 0] = 0
        arrays["attention_mask"] = mask
    elif how == "ids out of vocabulary":
        ids = arrays["input_ids"].copy()
        ids[0, 0] = 10**7
        arrays["input_ids"] = ids
    return arrays


@pytest.mark.parametrize(
    "how", ["missing layer", "wrong shape", "wrong dtype", "unsorted positions", "padding", "ids out of vocabulary"]
)
def test_import_refuses_mismatched_arrays(engine: Engine, how: str) -> None:
    cache, _, _ = filled(engine)
    with pytest.raises(EngineInputError, match="import"):
        engine.import_cache(_broken(engine.export_cache(cache), how))


def test_nbytes_counts_what_the_cache_holds(engine: Engine) -> None:
    cache = engine.new_cache()
    assert cache.nbytes == 0 and len(cache) == 0
    ids = prompt_ids(engine)
    engine.prefill(cache, ids, list(range(len(ids))), capture=None)
    per_slot = 2 * engine.num_layers * engine.num_kv_heads * engine.head_dim * 4  # fp32 keys + values
    assert cache.nbytes >= per_slot * len(ids)
    held = cache.nbytes
    for _ in range(3):  # decode steps land in the headroom: no growth
        engine.decode(cache, 42, cache.next_position, capture=None)
    assert cache.nbytes == held
