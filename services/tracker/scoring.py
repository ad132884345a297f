"""The scoring math of DESIGN.md section 3: aggregation, distance weighting and the score update.

Pure numpy; docs/scoring.md states every formula exactly as written here. Scores are float64 so that long
conversations do not drift; attention arrives as float32 (reduced vectors) or float16 (`full` tensors).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from services.common.errors import InvalidArgument

F64 = NDArray[np.float64]


def aggregate(tensor: NDArray[np.floating], mode: str) -> NDArray[np.float32]:
    """Reduces an attention tensor [layers, heads, ctx] to one value per context position.

    `full` is scored with the mean: the tensor itself is shipped for visualisation only.
    """
    if tensor.ndim != 3 or 0 in tensor.shape:
        raise InvalidArgument(f"attention tensor must be [layers, heads, ctx] and non-empty, got shape {tensor.shape}")
    if mode in ("mean", "full"):
        # Summing in float32 keeps fp16 inputs exact enough and is what the numpy baseline does too.
        return tensor.mean(axis=(0, 1), dtype=np.float32)
    if mode == "max":
        return tensor.max(axis=(0, 1)).astype(np.float32)
    if mode == "last_layer":
        return tensor[-1].mean(axis=0, dtype=np.float32)
    if mode == "weighted_layers":
        layers = tensor.shape[0]
        weights = np.arange(1, layers + 1, dtype=np.float32)
        weights /= weights.sum()
        per_layer = tensor.mean(axis=1, dtype=np.float32)  # [layers, ctx]
        return (weights @ per_layer).astype(np.float32)
    raise InvalidArgument(f"unknown aggregation mode {mode!r}")


def distance_weights(distance: NDArray[np.int64], mode: str, min_distance: int, scale: float) -> F64:
    """w(d): 0 below min_distance (except `none`, which ignores it); above it, a function of (d - m) / s."""
    if mode == "none":
        return np.ones(distance.shape, dtype=np.float64)
    beyond = distance >= min_distance
    x = np.maximum(distance - min_distance, 0).astype(np.float64) / scale
    if mode == "threshold":
        w = np.ones(distance.shape, dtype=np.float64)
    elif mode == "linear":
        w = 1.0 + x
    elif mode == "square_root":
        w = 1.0 + np.sqrt(x)
    elif mode == "logarithmic":
        w = 1.0 + np.log1p(x)
    else:
        raise InvalidArgument(f"unknown distance mode {mode!r}")
    return np.where(beyond, w, 0.0)


def update_scores(scores: F64, gain: F64, decay_mode: str, decay_rate: float) -> F64:
    """One step's update, given gain = boost * w(d) * a for every active token."""
    if decay_mode == "additive":
        return np.maximum(0.0, scores + gain - decay_rate)
    if decay_mode == "exponential":
        return scores * (1.0 - decay_rate) + gain
    if decay_mode == "none":
        return scores + gain
    raise InvalidArgument(f"unknown decay mode {decay_mode!r}")


def step_scores(
    scores: F64,
    positions: NDArray[np.int64],
    attention: NDArray[np.floating],
    *,
    boost: float,
    distance_mode: str,
    min_distance: int,
    distance_scale: float,
    decay_mode: str,
    decay_rate: float,
) -> F64:
    """New scores of the active tokens; the query is the last active position (the token fed at this step)."""
    distance = positions[-1] - positions
    w = distance_weights(distance, distance_mode, min_distance, distance_scale)
    gain = boost * w * attention.astype(np.float64)
    return update_scores(scores, gain, decay_mode, decay_rate)
