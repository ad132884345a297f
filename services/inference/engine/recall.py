"""Recall's arithmetic on the engine side: scoring the cold tier against a query, and merging entries back by position.

Scoring (docs/scoring.md "Recall"): for each layer l and query head h, the prompt's last query q (scaled, RoPE applied)
meets the hot keys and the cold keys in one softmax, as if the cold tokens had never left the cache:

    p = softmax([q·K_hotᵀ, q·K_coldᵀ])    (soft-capped like the model where it soft-caps)

and the [layers, heads, hot + cold] probabilities are reduced with the session's aggregation mode, exactly as a
captured row is. No model layer runs over the cold tokens: per layer it is one matrix product with the cold keys.
"""

from __future__ import annotations

import numpy as np
import torch

from .capture import reduce
from .cold import ColdChunk
from .kv_cache import SessionCache


def scores(
    cache: SessionCache, queries: list[torch.Tensor], cold: ColdChunk, mode: str, softcap: float | None
) -> tuple[np.ndarray, np.ndarray]:
    """(float32 [hot] over the cache's slots, float32 [cold] over `cold`'s positions), from one joint softmax."""
    rows = []
    for index, (layer, query) in enumerate(zip(cache.layers, queries, strict=True)):
        assert layer.keys is not None
        hot_keys = layer.keys[0].float()  # [kv_heads, T, d]
        kv_heads = hot_keys.shape[0]
        heads, dim = query.shape
        grouped = query.float().reshape(kv_heads, heads // kv_heads, dim)
        hot = torch.matmul(grouped, hot_keys.transpose(-1, -2))  # [kv_heads, group, T]
        cold_keys = cold.kv[index, 0].float()  # [kv_heads, C, d], on the host
        far = torch.matmul(grouped.cpu(), cold_keys.transpose(-1, -2)).to(hot.device)
        joint = torch.cat([hot, far], dim=-1)
        if softcap is not None:
            joint = torch.tanh(joint / softcap) * softcap
        rows.append(torch.softmax(joint, dim=-1).reshape(heads, -1))
    reduced = reduce(torch.stack(rows), mode).cpu().numpy()
    split = len(cache)
    return reduced[:split].astype(np.float32), reduced[split:].astype(np.float32)


def merge_order(held: list[int], new: list[int]) -> tuple[int, list[int], list[int]]:
    """Where entries at positions `new` (ascending, none held) go among `held` (ascending): (the first slot that
    moves, the order of `cat(held[start:], new)` that sorts it, the merged positions)."""
    start = int(np.searchsorted(np.asarray(held, dtype=np.int64), new[0])) if held else 0
    tail = held[start:] + new
    order = sorted(range(len(tail)), key=tail.__getitem__)
    return start, order, held[:start] + [tail[i] for i in order]
