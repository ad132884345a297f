"""Known values of the scoring formulas (docs/scoring.md), computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from services.common.errors import InvalidArgument
from services.tracker import native, scoring
from services.tracker.settings import Settings

D = np.array([0, 19, 20, 30, 120], dtype=np.int64)


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("none", [1, 1, 1, 1, 1]),
        ("threshold", [0, 0, 1, 1, 1]),
        ("linear", [0, 0, 1, 2, 11]),
        ("square_root", [0, 0, 1, 2, 1 + math.sqrt(10)]),
        ("logarithmic", [0, 0, 1, 1 + math.log(2), 1 + math.log(11)]),
    ],
)
def test_distance_weights(mode: str, expected: list[float]) -> None:
    assert np.allclose(scoring.distance_weights(D, mode, 20, 10.0), expected)


def test_updates() -> None:
    scores = np.array([0.0, 1.0, 0.001])
    gain = np.array([0.5, 0.0, 0.0])
    assert np.allclose(scoring.update_scores(scores, gain, "additive", 0.003), [0.497, 0.997, 0.0])
    assert np.allclose(scoring.update_scores(scores, gain, "exponential", 0.5), [0.5, 0.5, 0.0005])
    assert np.allclose(scoring.update_scores(scores, gain, "none", 0.5), [0.5, 1.0, 0.001])


def test_the_query_is_the_last_active_position() -> None:
    positions = np.array([0, 5, 40, 41], dtype=np.int64)
    attention = np.array([1.0, 1.0, 1.0, 1.0], dtype=np.float32)
    scores = scoring.step_scores(
        np.zeros(4),
        positions,
        attention,
        boost=2.0,
        distance_mode="linear",
        min_distance=20,
        distance_scale=10.0,
        decay_mode="none",
        decay_rate=0.0,
    )
    assert np.allclose(scores, [2 * (1 + 2.1), 2 * (1 + 1.6), 0.0, 0.0])


def test_full_tensor_aggregation_modes() -> None:
    tensor = np.arange(2 * 2 * 3, dtype=np.float32).reshape(2, 2, 3).astype("<f2")
    assert np.allclose(scoring.aggregate(tensor, "mean"), [4.5, 5.5, 6.5])
    assert np.allclose(scoring.aggregate(tensor, "max"), [9, 10, 11])
    assert np.allclose(scoring.aggregate(tensor, "last_layer"), [7.5, 8.5, 9.5])
    # layer weights 1/3 and 2/3 over per-layer means [1.5, 2.5, 3.5] and [7.5, 8.5, 9.5]
    assert np.allclose(scoring.aggregate(tensor, "weighted_layers"), [5.5, 6.5, 7.5])
    with pytest.raises(InvalidArgument):
        scoring.aggregate(tensor[0], "mean")


def test_settings_defaults_and_validation() -> None:
    s = Settings()
    assert (s.aggregation, s.decay_mode, s.decay_rate, s.boost) == ("mean", "additive", 0.003, 1.0)
    assert (s.distance_mode, s.min_distance, s.distance_scale) == ("logarithmic", 20, 10.0)
    assert (s.max_context_tokens, s.prune_mode, s.max_new_tokens, s.temperature, s.top_p) == (0, "in_place", 128, 0, 1)
    assert Settings.from_json(s.updated({"stop": ("\n\n",)}).to_json()).stop == ("\n\n",)
    for bad in (
        {"aggregation": "median"},
        {"distance_scale": 0.0},
        {"decay_mode": "exponential", "decay_rate": 1.5},
        {"min_distance": -1},
        {"max_new_tokens": 0},
        {"temperature": math.inf},
        {"stop": ("",)},
        {"nonsense": 1},
    ):
        with pytest.raises(InvalidArgument):
            s.updated(bad)


def test_without_the_c_kernels_the_fallback_paths_give_the_same_results(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(7)
    tensor = (rng.random((3, 4, 50)) ** 4).astype(np.float16)
    positions = np.arange(0, 100, 2, dtype=np.int64)
    scores = rng.random(50)
    attention = rng.random(40, dtype=np.float32)
    active = np.sort(rng.choice(50, 40, replace=False)).astype(np.int64)
    settings = dict(
        boost=1.5,
        distance_mode="logarithmic",
        min_distance=3,
        distance_scale=4.0,
        decay_mode="additive",
        decay_rate=0.01,
    )
    results = []
    for available in (True, False):
        monkeypatch.setattr(native, "available", lambda available=available: available)
        mean, suspicious = scoring.mean_of_full(tensor)
        updated = scores.copy()
        live = np.empty(len(active))
        changed = scoring.update_active(updated, positions, active, attention, **settings, epsilon=0.05, live=live)  # type: ignore[arg-type]
        results.append((mean, suspicious, updated, changed, live))
    (fast_mean, fast_flag, fast_scores, fast_changed, fast_live) = results[0]
    (slow_mean, slow_flag, slow_scores, slow_changed, slow_live) = results[1]
    assert fast_live.tobytes() == slow_live.tobytes() == fast_scores[active].tobytes()
    np.testing.assert_allclose(fast_mean, slow_mean, rtol=1e-6)
    assert fast_flag is slow_flag is False
    assert fast_scores.tobytes() == slow_scores.tobytes()
    assert 0 < len(fast_changed) < len(active)  # some entries moved more than epsilon, some less
    np.testing.assert_array_equal(fast_changed, slow_changed)
    negative = tensor.copy()
    negative[0, 0, 0] = -1.0
    assert scoring.mean_of_full(negative)[1] is True
