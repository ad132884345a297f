"""The obfuscation chain: any sequence of steps, logged and undone in reverse, round-trips bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.common.errors import DataLoss, InvalidArgument
from services.snapshot.obfuscation import STEPS, Chain, Step
from services.snapshot.tensors import from_npy, to_npy_bytes

DTYPES = ["<f4", "<f2", "<u2", "<i8", "<i4"]


@st.composite
def tensors(draw: st.DrawFn) -> dict[str, np.ndarray]:
    layers = draw(st.integers(1, 3))
    heads = draw(st.integers(1, 4))
    tokens = draw(st.integers(0, 9))
    head_dim = draw(st.integers(1, 6))
    dtype = np.dtype(draw(st.sampled_from(DTYPES)))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    ids_max = draw(st.sampled_from([1, 7, 49152, 262144]))
    out = {
        "input_ids": rng.integers(0, ids_max, (1, tokens), dtype=np.int64),
        "attention_mask": np.ones((1, tokens), dtype=np.int64),
        "position_ids": np.arange(tokens, dtype=np.int64)[None],
    }
    for i in range(layers):
        for kind in ("key", "value"):
            # Raw random bytes: every bit pattern, NaN payloads and signed zeros included, must survive.
            raw = rng.integers(0, 256, heads * tokens * head_dim * dtype.itemsize, dtype=np.uint8)
            out[f"layer.{i}.{kind}"] = raw.view(dtype).reshape(1, heads, tokens, head_dim)
    cold = draw(st.one_of(st.none(), st.integers(0, 9)))  # a cold tier (recall) of its own length, or none
    if cold is not None:
        # Cold ids may lie beyond every hot id (and so beyond what remap_ids' permutation covers).
        out["cold.input_ids"] = rng.integers(0, 2 * ids_max, (1, cold), dtype=np.int64)
        out["cold.position_ids"] = np.sort(rng.choice(4 * cold + 1, cold, replace=False)).astype(np.int64)[None]
        for i in range(layers):
            for kind in ("key", "value"):
                raw = rng.integers(0, 256, heads * cold * head_dim * dtype.itemsize, dtype=np.uint8)
                out[f"cold.layer.{i}.{kind}"] = raw.view(dtype).reshape(1, heads, cold, head_dim)
    return out


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cache=tensors(), kinds=st.lists(st.sampled_from(STEPS), max_size=6))
def test_any_chain_round_trips_bit_exact_through_its_logged_form(
    cache: dict[str, np.ndarray], kinds: list[str]
) -> None:
    chain = Chain.new(kinds)
    stored = {name: chain.apply(name, array.copy()) for name, array in cache.items()}
    # What a loader has: the text of obfchain.txt and the symbolic map, read back from .npy bytes.
    symbolic_map = from_npy(bytearray(to_npy_bytes(chain.symbolic_map())), "symbolic_map.npy")
    restored_chain = Chain.from_text(chain.to_text(), symbolic_map)
    assert restored_chain.kinds == kinds
    for name, array in cache.items():
        back = restored_chain.undo(name, stored[name].copy())
        assert back.dtype == array.dtype and back.shape == array.shape
        assert back.tobytes() == array.tobytes(), name


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cache=tensors(), kinds=st.lists(st.sampled_from(STEPS), max_size=6))
def test_the_fused_save_path_stores_the_same_bytes(cache: dict[str, np.ndarray], kinds: list[str]) -> None:
    """apply_parts (rotations as block order, masks in place) must equal apply (materialised), byte for byte."""
    fused = Chain.new(kinds)
    plain = Chain([Step(step.kind, step.seed) for step in fused.steps])
    for name, array in cache.items():
        parts = fused.apply_parts(name, array.copy())
        assert b"".join(bytes(p) for p in parts) == plain.apply(name, array.copy()).tobytes(), name
    assert np.array_equal(fused.symbolic_map(), plain.symbolic_map())


def test_each_step_really_changes_what_it_covers() -> None:
    rng = np.random.default_rng(1)
    keys = rng.standard_normal((1, 4, 16, 8)).astype(np.float32)
    ids = rng.integers(0, 1000, (1, 64), dtype=np.int64)
    # A fixed seed: a random permutation of 4 heads is the identity once in 24 draws, which would fail the check
    # below by chance (seed 1 is such a draw); seed 0 moves heads in layer 0.
    rotate = Chain([Step("rotate_heads", 0)])
    rotated = rotate.apply("layer.0.key", keys.copy())
    assert sorted(map(bytes, rotated[0])) == sorted(map(bytes, keys[0]))  # the same heads...
    assert any(not np.array_equal(rotated[0, h], keys[0, h]) for h in range(4))  # ...in another order
    assert rotate.apply("layer.0.key", keys.copy()).tobytes() == rotated.tobytes()  # seeded: deterministic
    masked = Chain.new(["xor_mask"]).apply("layer.0.key", keys.copy())
    assert np.mean(masked.view(np.uint8) != keys.view(np.uint8)) > 0.9
    remap = Chain.new(["remap_ids"])
    remapped = remap.apply("input_ids", ids.copy())
    assert not np.array_equal(remapped, ids) and remapped.max() <= ids.max()
    assert remap.symbolic_map().shape == (1, int(ids.max()) + 1)
    # Steps touch only their tensors: the mask leaves token ids to remap_ids, remap leaves the cache alone.
    assert Chain.new(["xor_mask"]).apply("input_ids", ids.copy()).tobytes() == ids.tobytes()
    assert remap.apply("layer.0.key", keys.copy()).tobytes() == keys.tobytes()


def test_cold_tier_tensors_share_the_hot_rotation_get_their_own_masks_and_keep_their_ids() -> None:
    rng = np.random.default_rng(2)
    keys = rng.standard_normal((1, 6, 10, 4)).astype(np.float32)
    cold_keys = rng.standard_normal((1, 6, 3, 4)).astype(np.float32)
    ids = rng.integers(0, 100, (1, 10), dtype=np.int64)
    cold_ids = np.array([[5, 1000, 99999]], dtype=np.int64)  # beyond the hot ids' range
    for layer in range(3):
        rotate = Chain.new(["rotate_heads"])
        hot, cold = f"layer.{layer}.key", f"cold.layer.{layer}.key"
        hot_order = [bytes(h) for h in rotate.apply(hot, keys.copy())[0]]
        cold_order = [bytes(h) for h in rotate.apply(cold, cold_keys.copy())[0]]
        # Where hot head h went, cold head h went too.
        assert [hot_order.index(bytes(h)) for h in keys[0]] == [cold_order.index(bytes(h)) for h in cold_keys[0]]
    mask = Chain.new(["xor_mask"])
    same = keys[:, :, :3].copy()
    assert mask.apply("layer.0.key", same.copy()).tobytes() != mask.apply("cold.layer.0.key", same.copy()).tobytes()
    assert mask.apply("cold.input_ids", cold_ids.copy()).tobytes() != cold_ids.tobytes()  # masked like the rest
    remap = Chain.new(["remap_ids"])
    remap.apply("input_ids", ids.copy())
    assert remap.apply("cold.input_ids", cold_ids.copy()).tobytes() == cold_ids.tobytes()  # hot ids only
    # Sent before the hot ids (no permutation yet), cold ids are still fine: remap_ids never touches them.
    early = Chain.new(["remap_ids", "xor_mask"])
    stored = early.apply("cold.input_ids", cold_ids.copy())
    early.apply("input_ids", ids.copy())
    assert early.undo("cold.input_ids", stored).tobytes() == cold_ids.tobytes()


def test_bad_chains_and_bad_logs_are_refused() -> None:
    with pytest.raises(InvalidArgument, match="unknown obfuscation step 'rot13'"):
        Chain.new(["xor_mask", "rot13"])
    with pytest.raises(InvalidArgument, match="non-negative"):
        Chain.new(["remap_ids"]).apply("input_ids", np.array([[3, -1]], dtype=np.int64))
    with pytest.raises(InvalidArgument, match="beyond the supported vocabulary"):
        Chain.new(["remap_ids"]).apply("input_ids", np.array([[2**40]], dtype=np.int64))
    with pytest.raises(InvalidArgument, match="integer"):
        Chain.new(["remap_ids"]).apply("input_ids", np.array([[1.5]], dtype=np.float32))
    empty = np.zeros((0, 0), dtype=np.int64)
    with pytest.raises(DataLoss, match="malformed"):
        Chain.from_text("0 xor_mask seed=1\n2 xor_mask seed=2\n", empty)
    with pytest.raises(DataLoss, match="malformed"):
        Chain.from_text("0 shuffle seed=1\n", empty)
    with pytest.raises(DataLoss, match="remap_ids"):
        Chain.from_text("0 remap_ids seed=1\n", empty)
    with pytest.raises(DataLoss, match="not a permutation"):
        Chain.from_text("0 remap_ids seed=1\n", np.array([[0, 0, 1]], dtype=np.int64))
