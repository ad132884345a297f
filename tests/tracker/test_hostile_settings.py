"""Settings that made every score of a session overflow to inf or NaN (found by tests/fuzz): now refused, and at the
bounds the scores stay finite."""

from __future__ import annotations

import numpy as np
import pytest

from services.common.errors import InvalidArgument
from services.tracker import scoring
from services.tracker.settings import MAX_BOOST, MAX_INITIAL_SCORE, MIN_DISTANCE_SCALE, Settings


@pytest.mark.parametrize(
    "bad",
    [
        {"boost": 1e308},  # the first step's gain overflowed to inf
        {"initial_score": 1e308, "decay_mode": "none"},
        {"distance_mode": "linear", "distance_scale": 5e-324},  # w(d) = inf, and w * 0 = NaN
        {"distance_scale": MIN_DISTANCE_SCALE / 2},
        {"boost": MAX_BOOST * 2},
        {"initial_score": MAX_INITIAL_SCORE * 2},
    ],
)
def test_settings_that_overflow_the_scores_are_refused(bad: dict[str, object]) -> None:
    with pytest.raises(InvalidArgument):
        Settings().updated(bad)


def test_scores_stay_finite_at_the_bounds() -> None:
    s = Settings().updated(
        {"boost": MAX_BOOST, "distance_mode": "linear", "distance_scale": MIN_DISTANCE_SCALE, "decay_mode": "none"}
    )
    positions = np.array([0, 2**40, 2**61], dtype=np.int64)
    scores = np.full(3, MAX_INITIAL_SCORE)
    attention = np.array([0.0, 3.4e38, 1.0], dtype=np.float32)  # any finite float32 a frame may carry
    for _ in range(100):
        scores = scoring.step_scores(
            scores,
            positions,
            attention,
            boost=s.boost,
            distance_mode=s.distance_mode,
            min_distance=s.min_distance,
            distance_scale=s.distance_scale,
            decay_mode=s.decay_mode,
            decay_rate=s.decay_rate,
        )
    assert np.isfinite(scores).all()
