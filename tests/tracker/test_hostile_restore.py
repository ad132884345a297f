"""A restored dictionary at the edge of its integer types, or with positions spread wide (found by tests/fuzz): the
session once refused every message or frame after it (INTERNAL); now the restore is refused, or the frames scored."""

from __future__ import annotations

import numpy as np
import pytest

from services.common.errors import InvalidArgument
from services.tracker import restore, scoring
from services.tracker.restore import ExportedToken


def test_positions_spread_wide_are_scored_without_a_table_as_wide() -> None:
    # A restored dictionary may spread its positions up to 2^62: the weights table grew to cover the widest distance
    # (2^63 entries here), so the frame failed, and every later one.
    positions = np.array([0, 2**40, 2**61], dtype=np.int64)
    scores, live = np.zeros(3), np.zeros(3)
    attention = np.array([0.2, 0.3, 0.5], dtype=np.float32)
    kwargs = dict(boost=1.0, distance_mode="logarithmic", min_distance=20, distance_scale=10.0, decay_rate=0.003)
    changed = scoring.update_active(
        scores,
        positions,
        None,
        attention,
        decay_mode="additive",
        epsilon=1e-4,
        live=live,
        **kwargs,  # type: ignore[arg-type]
    )
    expected = scoring.step_scores(np.zeros(3), positions, attention, decay_mode="additive", **kwargs)  # type: ignore[arg-type]
    assert np.array_equal(scores, expected) and np.array_equal(live, expected) and list(changed) == [0, 1]


def _token(position: int, turn: int = 0, sentence: int = 0) -> ExportedToken:
    return ExportedToken("a.", 28, position, 0.0, turn, sentence, "user", False)


@pytest.mark.parametrize(
    "tokens",
    [
        [_token(0), _token(2**63 - 1)],  # the next token's position overflowed int64: every message then failed
        [_token(restore.MAX_POSITION)],
        [_token(0, turn=2**31 - 1)],  # the next turn id overflowed int32
        [_token(0, sentence=2**31 - 1)],
    ],
)
def test_a_restored_dictionary_must_leave_room_to_go_on(tokens: list[ExportedToken]) -> None:
    with pytest.raises(InvalidArgument):
        restore.columns(tokens, vocab_size=49152)


@pytest.mark.parametrize("next_position", [-1, restore.MAX_POSITION + 1, 2**63 - 1])
def test_a_restored_next_position_must_leave_room_to_go_on(next_position: int) -> None:
    with pytest.raises(InvalidArgument):
        restore.check_next_position(next_position)
    restore.check_next_position(restore.MAX_POSITION)
