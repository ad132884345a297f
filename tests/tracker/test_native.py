"""The C kernels against numpy: fp16 column sums (vector and portable loops) and the score update, bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.common.errors import InvalidArgument
from services.tracker import native, pruning, scoring
from services.tracker.frames import FrameInput, reduce_frame

pytestmark = pytest.mark.skipif(not native.available(), reason="no C compiler: the numpy paths are tested elsewhere")

DISTANCE = st.sampled_from(["none", "threshold", "linear", "square_root", "logarithmic"])
DECAY = st.sampled_from(["additive", "exponential", "none"])


@settings(deadline=None, max_examples=60)
@given(rows=st.integers(1, 37), cols=st.integers(1, 70), seed=st.integers(0, 2**32 - 1))
def test_column_sums_match_float64_sums_on_both_paths(rows: int, cols: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    # Include fp16 subnormals (below 6.1e-5): attention over many positions is full of them.
    values = (rng.random((rows, cols)) ** 6).astype(np.float16)
    expected = values.astype(np.float64).sum(axis=0)
    for portable in (False, True):
        sums, largest = native.column_sums_f16(values.view(np.uint16), portable=portable)
        np.testing.assert_allclose(sums, expected, rtol=1e-5, atol=1e-7)
        assert largest == int(values.view(np.uint16).max())


@pytest.mark.parametrize("bad", [-1.0, np.inf, -np.inf, np.nan])
@pytest.mark.parametrize("portable", [False, True])
def test_largest_pattern_flags_values_that_need_the_exact_check(bad: float, portable: bool) -> None:
    values = np.full((5, 19), 0.25, dtype=np.float16)
    values[3, 17] = bad  # in the scalar tail (column 16 onwards) and, below, in the vector body
    assert native.column_sums_f16(values.view(np.uint16), portable=portable)[1] >= scoring.SUSPICIOUS_F16
    values[3, 17] = 0.25
    values[1, 2] = bad
    assert native.column_sums_f16(values.view(np.uint16), portable=portable)[1] >= scoring.SUSPICIOUS_F16


def test_portable_loop_converts_every_finite_half_exactly() -> None:
    every = np.arange(0x7C00, dtype=np.uint16)  # all non-negative finite halves, one per column
    sums, largest = native.column_sums_f16(every[None, :], portable=True)
    np.testing.assert_array_equal(sums, every.view(np.float16).astype(np.float32))
    assert largest == 0x7BFF


def test_full_frames_are_validated_in_the_same_pass() -> None:
    positions = np.arange(9, dtype=np.int64)
    good = np.full((2, 3, 9), 0.125, dtype="<f2")
    vector, event = reduce_frame(FrameInput(0, 1, np.zeros(0, np.float32), good.tobytes(), 2, 3), positions)
    np.testing.assert_allclose(vector, 0.125)
    assert event is not None
    negative_zero = good.copy()
    negative_zero[1, 2, 4] = -0.0  # the sign bit is set, yet -0.0 is a valid (zero) attention value
    reduce_frame(FrameInput(0, 1, np.zeros(0, np.float32), negative_zero.tobytes(), 2, 3), positions)
    for bad in (-0.5, np.inf, np.nan):
        tensor = good.copy()
        tensor[1, 2, 4] = bad
        with pytest.raises(InvalidArgument):
            reduce_frame(FrameInput(0, 1, np.zeros(0, np.float32), tensor.tobytes(), 2, 3), positions)


@settings(deadline=None, max_examples=80)
@given(
    size=st.integers(1, 300),
    seed=st.integers(0, 2**32 - 1),
    distance_mode=DISTANCE,
    min_distance=st.integers(0, 30),
    distance_scale=st.floats(0.1, 50.0),
    decay_mode=DECAY,
    decay_rate=st.floats(0.0, 1.0),
    boost=st.sampled_from([1.0, 0.0, 2.5]),
    pruned=st.booleans(),
)
def test_score_update_is_bit_identical_to_numpy(
    size: int,
    seed: int,
    distance_mode: str,
    min_distance: int,
    distance_scale: float,
    decay_mode: str,
    decay_rate: float,
    boost: float,
    pruned: bool,
) -> None:
    rng = np.random.default_rng(seed)
    positions = np.cumsum(rng.integers(1, 4, size)).astype(np.int64)  # ascending, with gaps
    scores = rng.random(size) * rng.choice([0.0, 1.0, 5.0])
    active = np.flatnonzero(rng.random(size) < 0.7) if pruned else None
    if active is not None and active.size == 0:
        active = np.array([size - 1], dtype=np.int64)
    count = size if active is None else len(active)
    attention = rng.random(count, dtype=np.float32)
    settings_ = dict(
        boost=boost,
        distance_mode=distance_mode,
        min_distance=min_distance,
        distance_scale=distance_scale,
        decay_mode=decay_mode,
        decay_rate=decay_rate,
    )
    expected = scores.copy()
    index = np.arange(size) if active is None else active
    expected[index] = scoring.step_scores(scores[index], positions[index], attention, **settings_)  # type: ignore[arg-type]
    got = scores.copy()
    epsilon = 1e-4
    live = np.empty(count)
    changed = scoring.update_active(got, positions, active, attention, **settings_, epsilon=epsilon, live=live)  # type: ignore[arg-type]
    assert got.tobytes() == expected.tobytes()  # bit for bit, -0.0 included
    np.testing.assert_array_equal(changed, np.flatnonzero(np.abs(expected - scores) > epsilon))
    assert live.tobytes() == expected[index].tobytes()  # the new scores in active order, as the store keeps them


@settings(deadline=None, max_examples=80)
@given(seed=st.integers(0, 2**32 - 1), size=st.integers(1, 200), gen_turn=st.sampled_from([-1, 3]))
def test_sentence_runs_match_numpy(seed: int, size: int, gen_turn: int) -> None:
    rng = np.random.default_rng(seed)
    # Turns of a few sentences each; sentence keys grow along positions; a sentence never spans two turns.
    turn = np.sort(rng.integers(0, 6, size)).astype(np.int32)
    new_sentence = np.r_[True, (rng.random(size - 1) < 0.3) | (turn[1:] != turn[:-1])]
    keys = (np.cumsum(new_sentence) - 1).astype(np.int64)
    role = np.where(turn == 0, 0, np.where(turn % 2 == 1, 1, 2)).astype(np.uint8)
    scores = rng.random(size) * rng.choice([0.0, 1.0])
    active = np.flatnonzero(rng.random(size) < 0.8).astype(np.int64)
    last_user_turn = 5
    got = native.sentence_runs(active, keys, scores, role, turn, last_user_turn, gen_turn)
    protected = (role[active] == 0) | (turn[active] == last_user_turn) | ((turn[active] == gen_turn) & (gen_turn >= 0))
    expected = pruning.runs(keys[active], scores[active], ~protected)
    for a, b in zip(got, expected, strict=True):
        np.testing.assert_array_equal(a, b)
