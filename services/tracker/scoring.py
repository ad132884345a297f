"""The scoring math of DESIGN.md section 3: aggregation, distance weighting and the score update.

Pure numpy; docs/scoring.md states every formula exactly as written here. Scores are float64 so that long
conversations do not drift; attention arrives as float32 (reduced vectors) or float16 (`full` tensors).
"""

from __future__ import annotations

import warnings

import numpy as np
from numpy.typing import NDArray

from services.common.errors import InvalidArgument
from services.tracker import native

F64 = NDArray[np.float64]


def to_float32(tensor: NDArray[np.floating]) -> NDArray[np.float32]:
    """fp16 -> fp32. numpy converts half floats in software (about 1 ms for 28x28x500 here); torch, which the
    tokenizer's library has loaded already, uses the CPU's conversion instructions (about 0.05 ms)."""
    if tensor.dtype != np.float16:
        return tensor.astype(np.float32, copy=False)
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a project dependency; numpy is the slow but correct path
        return tensor.astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # read-only wire bytes: torch warns, we never write to them
        return torch.from_numpy(tensor).float().numpy()  # type: ignore[no-any-return]


def single_threaded() -> None:
    """One compute thread for torch: the tracker's tensors are small, and a thread pool on a shared machine costs
    more than it saves (about 2x slower aggregation measured with two threads on two busy cores)."""
    try:
        import torch
    except ImportError:  # pragma: no cover - see to_float32
        return
    torch.set_num_threads(1)


def _torch_mean(rows: NDArray[np.float16]) -> NDArray[np.float32] | None:
    """Column means of fp16 rows accumulated in float32 by one torch call (`mean(dtype=float32)`): the path when the
    C kernel is unavailable (about twice its time on 28x28x500; numpy's half conversion is about 4x slower still)."""
    try:
        import torch
    except ImportError:  # pragma: no cover - see to_float32
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(rows).mean(dim=0, dtype=torch.float32).numpy()  # type: ignore[no-any-return]


# fp16 bit patterns at or above this are infinities, NaNs, or carry the sign bit.
SUSPICIOUS_F16 = 0x7C00


def mean_of_full(tensor: NDArray[np.float16]) -> tuple[NDArray[np.float32], bool]:
    """The mean over layers and heads of an fp16 [layers, heads, ctx] tensor, and whether any value may be negative,
    infinite or NaN (True asks the caller for the exact check; -0.0 also lands there and passes it).

    One pass of the C kernel when it is built (convert, accumulate and find the largest bit pattern together);
    otherwise an integer max and torch's mean.
    """
    layers, heads, ctx = tensor.shape
    rows = np.ascontiguousarray(tensor).reshape(layers * heads, ctx)
    if native.available():
        sums, largest = native.column_sums_f16(rows.view(np.uint16))
        sums /= np.float32(layers * heads)
        return sums, largest >= SUSPICIOUS_F16
    suspicious = int(rows.view(np.uint16).max()) >= SUSPICIOUS_F16
    mean = _torch_mean(rows)
    if mean is None:  # pragma: no cover - torch is a project dependency
        mean = rows.astype(np.float32).mean(axis=0)
    return mean, suspicious


def aggregate(tensor: NDArray[np.floating], mode: str) -> NDArray[np.float32]:
    """Reduces an attention tensor [layers, heads, ctx] to one value per context position, in float32.

    `full` is scored with the mean: the tensor itself is shipped for visualisation only.
    """
    if tensor.ndim != 3 or 0 in tensor.shape:
        raise InvalidArgument(f"attention tensor must be [layers, heads, ctx] and non-empty, got shape {tensor.shape}")
    layers, heads, ctx = tensor.shape
    if mode in ("mean", "full") and tensor.dtype == np.float16:
        return mean_of_full(tensor)[0]  # type: ignore[arg-type]
    x = to_float32(tensor)
    if mode in ("mean", "full"):
        # A matrix-vector product with equal weights: the BLAS path is faster than ndarray.mean over two axes.
        weights = np.full(layers * heads, 1.0 / (layers * heads), dtype=np.float32)
        return weights @ x.reshape(layers * heads, ctx)
    if mode == "max":
        return x.reshape(layers * heads, ctx).max(axis=0)
    if mode == "last_layer":
        return x[-1].mean(axis=0)
    if mode == "weighted_layers":
        layer_weights = np.arange(1, layers + 1, dtype=np.float32)
        layer_weights /= layer_weights.sum()
        per_layer = x.mean(axis=1)  # [layers, ctx]
        return layer_weights @ per_layer
    raise InvalidArgument(f"unknown aggregation mode {mode!r}")


def distance_weights(distance: NDArray[np.int64], mode: str, min_distance: int, scale: float) -> F64:
    """w(d): 0 below min_distance (except `none`, which ignores it); above it, a function of (d - m) / s.

    Looked up in a table of w(0..D) per (mode, m, s), computed once by `_weights_formula` and grown by doubling:
    a gather instead of a log1p over the whole context every step (the same numbers, bit for bit).
    """
    if distance.size == 0 or int(distance.min()) < 0 or int(distance.max()) >= MAX_TABLE:
        # Nothing to look up, not a query-to-key distance, or a span no table should be grown to.
        return _weights_formula(distance, mode, min_distance, scale)
    table = _weights_table(mode, min_distance, scale, int(distance.max()))
    return table[distance]


_TABLES: dict[tuple[str, int, float], F64] = {}
_MAX_TABLES = 64  # settings are per session, but a handful of distinct distance settings is the norm
# Distances of 1M positions and more are weighted by the formula itself: a table grows to the next power of two above
# the largest distance, and a restored dictionary may spread its positions over 2^62 (the table was then 2^63 entries
# long: the frame failed, and so did every later one). 8 MiB per table at most.
MAX_TABLE = 1 << 20


def _weights_table(mode: str, min_distance: int, scale: float, highest: int) -> F64:
    key = (mode, min_distance, scale)
    table = _TABLES.get(key)
    if table is None or len(table) <= highest:
        size = max(4096, 1 << highest.bit_length())
        table = _weights_formula(np.arange(size, dtype=np.int64), mode, min_distance, scale)
        table.flags.writeable = False  # shared by every session with these settings
        if key not in _TABLES and len(_TABLES) >= _MAX_TABLES:
            _TABLES.pop(next(iter(_TABLES)))
        _TABLES[key] = table
    return table


def _weights_formula(distance: NDArray[np.int64], mode: str, min_distance: int, scale: float) -> F64:
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
    gain = distance_weights(distance, distance_mode, min_distance, distance_scale)  # a fresh array: updated in place
    if boost != 1.0:
        gain *= boost
    gain *= attention  # float32 promoted to float64 element by element, as attention.astype(np.float64) would
    return _update_in_place(gain, scores, decay_mode, decay_rate)


def update_active(
    scores: F64,
    positions: NDArray[np.int64],
    active: NDArray[np.intp] | None,
    attention: NDArray[np.floating],
    *,
    boost: float,
    distance_mode: str,
    min_distance: int,
    distance_scale: float,
    decay_mode: str,
    decay_rate: float,
    epsilon: float,
    live: F64,
) -> NDArray[np.intp]:
    """`scores[active] = step_scores(scores[active], positions[active], attention, ...)`, in place (every entry when
    `active` is None); the new scores also go to `live`, in the order of `active`. Returns the indices of the entries
    whose score moved by more than `epsilon`, ascending.

    One pass of the C kernel when it is built: the same operations in the same order, so the same numbers bit for
    bit as the numpy path, which runs otherwise."""
    count = len(positions) if active is None else len(active)
    span = 0
    if count:
        first, last = (0, count - 1) if active is None else (int(active[0]), int(active[-1]))
        span = int(positions[last] - positions[first])
    if count and decay_mode in native.DECAY_MODES and native.available() and span < MAX_TABLE:
        table = _weights_table(distance_mode, min_distance, distance_scale, span)
        if attention.dtype != np.float32 or not attention.flags.c_contiguous:
            attention = np.ascontiguousarray(attention, dtype=np.float32)
        return native.score_step(  # type: ignore[return-value]
            scores,
            positions,
            active,
            attention,
            table,
            boost,
            decay_mode,
            decay_rate,
            epsilon,
            live,  # type: ignore[arg-type]
        )
    settings = dict(
        boost=boost,
        distance_mode=distance_mode,
        min_distance=min_distance,
        distance_scale=distance_scale,
        decay_mode=decay_mode,
        decay_rate=decay_rate,
    )
    index = np.arange(count) if active is None else active
    before = scores[index]
    after = step_scores(before, positions[index], attention, **settings)  # type: ignore[arg-type]
    scores[index] = after
    live[:] = after
    after -= before
    return index[np.abs(after, out=after) > epsilon]  # type: ignore[no-any-return]


def _update_in_place(gain: F64, scores: F64, decay_mode: str, decay_rate: float) -> F64:
    """`update_scores` computed in the gain array (no temporaries): the same operations in the same order."""
    if decay_mode == "additive":
        gain += scores
        gain -= decay_rate
        return np.maximum(gain, 0.0, out=gain)
    if decay_mode == "exponential":
        gain += scores * (1.0 - decay_rate)
        return gain
    if decay_mode == "none":
        gain += scores
        return gain
    raise InvalidArgument(f"unknown decay mode {decay_mode!r}")
