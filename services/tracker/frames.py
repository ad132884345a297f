"""Validating a frame's attention and reducing it to one value per active position.

A frame is refused (InvalidArgument, nothing changed) when its attention does not cover exactly the active positions,
holds NaN, infinite or negative values, or mixes the reduced vector with the `full` tensor.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from services.common.errors import InvalidArgument
from services.tracker.scoring import mean_of_full

# An `attention` event carries at most this many fp16 values (~170 KiB of base64): beyond that only the most recent
# positions are included, which is what a visualisation of the newest step looks at.
MAX_ATTENTION_EVENT_VALUES = 64 * 1024


@dataclass(frozen=True, slots=True)
class FrameInput:
    step: int
    token_id: int
    attention: NDArray[np.float32]  # reduced vector (empty when `full` is sent)
    full: bytes = b""  # fp16 little-endian [layers, heads, ctx]
    layers: int = 0
    heads: int = 0


def _check_values(values: NDArray[np.floating], what: str) -> None:
    # The common case in two reductions without temporaries: NaN propagates through min, so this holds only when
    # every value is finite and non-negative. The checks below name what is wrong.
    if values.size == 0 or (values.min() >= 0 and values.max() < np.inf):
        return
    if not np.isfinite(values).all():
        raise InvalidArgument(f"{what} holds NaN or infinite values")
    if (values < 0).any():
        raise InvalidArgument(f"{what} holds negative values")


def reduce_frame(
    frame: FrameInput, active_positions: NDArray[np.int64]
) -> tuple[NDArray[np.float32], dict[str, Any] | None]:
    """The score vector of a frame, and the `attention` event payload for a full tensor (None otherwise)."""
    ctx = len(active_positions)
    if frame.full:
        if frame.attention.size:
            raise InvalidArgument("frame carries both attention and full_attention; send one")
        if frame.layers <= 0 or frame.heads <= 0:
            raise InvalidArgument("frame full_attention needs layers > 0 and heads > 0")
        expected = frame.layers * frame.heads * ctx * 2
        if len(frame.full) != expected:
            raise InvalidArgument(
                f"frame full_attention has {len(frame.full)} bytes; expected {expected} "
                f"(fp16 [{frame.layers}, {frame.heads}, {ctx} active positions])"
            )
        tensor = np.frombuffer(frame.full, dtype="<f2").reshape(frame.layers, frame.heads, ctx)
        vector, suspicious = mean_of_full(tensor)  # `full` is scored with the mean of all layers and heads
        if suspicious:  # the common case never gets here: the mean's own pass found no pattern >= 0x7C00
            _check_values(tensor, "frame full_attention")
        return vector, _attention_event(tensor, active_positions)
    if frame.attention.size != ctx:
        raise InvalidArgument(
            f"frame attention has {frame.attention.size} values; expected {ctx} (one per active position)"
        )
    _check_values(frame.attention, "frame attention")
    return frame.attention, None


def _attention_event(tensor: NDArray[np.float16], positions: NDArray[np.int64]) -> dict[str, Any]:
    layers, heads, ctx = tensor.shape
    keep = max(1, min(ctx, MAX_ATTENTION_EVENT_VALUES // (layers * heads)))
    part = np.ascontiguousarray(tensor[:, :, ctx - keep :])
    return {
        "layers": layers,
        "heads": heads,
        "positions": positions[ctx - keep :].tolist(),
        "truncated": keep < ctx,
        "data": base64.b64encode(part.astype("<f2").tobytes()).decode(),
    }
