"""Recall's arithmetic on the engine side: scoring the cold tier against a query, and merging entries back by position.

Scoring (docs/scoring.md "Recall"): for each probed query q (the latest user message's tokens, scaled, RoPE applied),
layer l and query head h, q meets the hot keys and the cold keys in one softmax, as if the cold tokens had never left
the cache:

    p = softmax([q·K_hotᵀ, q·K_coldᵀ])    (soft-capped like the model where it soft-caps)

the [layers, heads, hot + cold] probabilities of each query are reduced with the session's aggregation mode, exactly
as a captured row is, and a position's score is the maximum over the queries. No model layer runs over the cold
tokens: per layer it is one matrix product with the cold keys.
"""

from __future__ import annotations

import numpy as np
import torch

from .cold import ColdChunk
from .kv_cache import SessionCache


def scores(
    cache: SessionCache, queries: list[torch.Tensor], cold: ColdChunk, mode: str, softcap: float | None
) -> tuple[np.ndarray, np.ndarray]:
    """(float32 [hot] over the cache's slots, float32 [cold] over `cold`'s positions): per probed query one joint
    softmax per layer and head, reduced over layers and heads with `mode` as a captured row is, then the maximum
    over the queries. Layer by layer, so only one layer's [heads, queries, hot + cold] map exists at a time."""
    num_layers = len(cache.layers)
    total: torch.Tensor | None = None
    for index, (layer, query) in enumerate(zip(cache.layers, queries, strict=True)):
        if mode == "last_layer" and index != num_layers - 1:
            continue
        assert layer.keys is not None
        hot_keys = layer.keys[0].float()  # [kv_heads, T, d]
        kv_heads = hot_keys.shape[0]
        heads, probes, dim = query.shape
        grouped = query.float().reshape(kv_heads, (heads // kv_heads) * probes, dim)
        hot = torch.matmul(grouped, hot_keys.transpose(-1, -2))  # [kv_heads, group * probes, T]
        cold_keys = cold.kv[index, 0].float()  # [kv_heads, C, d], on the host
        far = torch.matmul(grouped.cpu(), cold_keys.transpose(-1, -2)).to(hot.device)
        joint = torch.cat([hot, far], dim=-1)
        if softcap is not None:
            joint = torch.tanh(joint / softcap) * softcap
        probs = torch.softmax(joint, dim=-1).reshape(heads, probes, -1)  # query head h = kv head h // group
        part = _layer_part(probs, mode, index, num_layers)  # [probes, hot + cold]
        total = part if total is None else (torch.maximum(total, part) if mode == "max" else total + part)
    assert total is not None
    reduced = total.amax(dim=0).cpu().numpy()
    split = len(cache)
    return reduced[:split].astype(np.float32), reduced[split:].astype(np.float32)


def _layer_part(probs: torch.Tensor, mode: str, layer: int, num_layers: int) -> torch.Tensor:
    """One layer's share of `capture.reduce` for [heads, probes, ctx] probabilities (summed or maxed over layers)."""
    if mode == "max":
        return probs.amax(dim=0)
    per_head = probs.mean(dim=0)
    if mode in ("mean", "full"):
        return per_head / num_layers
    if mode == "last_layer":
        return per_head
    return per_head * ((layer + 1) / (num_layers * (num_layers + 1) / 2))  # weighted_layers


def merge_order(held: list[int], new: list[int]) -> tuple[int, list[int], list[int]]:
    """Where entries at positions `new` (ascending, none held) go among `held` (ascending): (the first slot that
    moves, the order of `cat(held[start:], new)` that sorts it, the merged positions)."""
    start = int(np.searchsorted(np.asarray(held, dtype=np.int64), new[0])) if held else 0
    tail = held[start:] + new
    order = sorted(range(len(tail)), key=tail.__getitem__)
    return start, order, held[:start] + [tail[i] for i in order]
