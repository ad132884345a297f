"""Pruning policies: which score a session's tokens accumulate, and in which order its prunable sentences go.

Every policy prunes whole sentences, protects the same turns and stops at the same budget (`dictionary.prune`); a
policy decides only the two things here, so comparing them compares the rule and nothing else.

- `brightness`: the session's own scoring settings (decay, distance weighting, boost); dimmest sentence maximum first.
- `h2o`: accumulated attention, no decay, no distance weighting (H2O's heavy hitters at sentence level).
- `tova`: the latest step's attention only (TOVA's rule at sentence level).
- `recency`: the oldest prunable sentence first (StreamingLLM's window; the system prompt, always kept, is the sink).
- `random`: a seeded random order, fixed per session and sentence (the floor any rule must beat).

The score a session stores and shows as brightness is the one its policy ranks by (h2o and tova replace the
session's scoring settings); recency and random keep brightness's score for display and ignore it when pruning.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from services.tracker.settings import Settings


@dataclass(frozen=True, slots=True)
class ScoreRule:
    """The parameters of `scoring.update_active` a policy scores with."""

    boost: float
    distance_mode: str
    min_distance: int
    distance_scale: float
    decay_mode: str
    decay_rate: float


# Accumulated attention: g = a, nothing decays. Latest attention only: score ← score · (1 − 1) + a = a.
_H2O = ScoreRule(1.0, "none", 0, 1.0, "none", 0.0)
_TOVA = ScoreRule(1.0, "none", 0, 1.0, "exponential", 1.0)


def score_rule(settings: Settings) -> ScoreRule:
    if settings.prune_policy == "h2o":
        return _H2O
    if settings.prune_policy == "tova":
        return _TOVA
    s = settings
    return ScoreRule(s.boost, s.distance_mode, s.min_distance, s.distance_scale, s.decay_mode, s.decay_rate)


def priorities(
    settings: Settings, session_id: str, keys: NDArray[np.int64], maxima: NDArray[np.float64]
) -> NDArray[np.float64]:
    """One number per prunable sentence (given oldest first, with its key and maximum score): lowest goes first,
    ties to the oldest."""
    policy = settings.prune_policy
    if policy == "recency":
        return keys.astype(np.float64)
    if policy == "random":
        return _uniform(_session_seed(session_id, settings.seed), keys)
    return maxima


def _session_seed(session_id: str, seed: int) -> np.uint64:
    digest = hashlib.blake2b(f"{session_id}:{seed}".encode(), digest_size=8).digest()
    return np.uint64(int.from_bytes(digest, "little"))


def _uniform(seed: np.uint64, keys: NDArray[np.int64]) -> NDArray[np.float64]:
    """splitmix64 of (seed + key): a uniform number in [0, 1) per sentence that depends on nothing else, so the order
    survives tracker restarts and replicas without storing anything."""
    with np.errstate(over="ignore"):
        z = keys.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15) + seed
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z ^= z >> np.uint64(31)
    return (z >> np.uint64(11)).astype(np.float64) * 2.0**-53
