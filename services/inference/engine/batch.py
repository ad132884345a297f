"""One forward over many conversations: their tokens packed into one sequence, each attending to its own cache.

The model's linear layers see a single [1, T] sequence, so every weight is read once per step for the whole batch
(decode here is bound by reading the weights). Attention is the one place where conversations differ: `BatchCache`
stands in for transformers' cache, appends each conversation's slice of the new keys and values to that
conversation's own `SessionCache` (no padding, no copy of the other slots) and hands the attention function, per
layer, each conversation's whole keys and values as views of its buffers. RoPE needs nothing special: every packed
token carries its own conversation's position.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from transformers.cache_utils import Cache, DynamicLayer

from .capture import CaptureSink
from .kv_cache import SessionCache
from .sampling import SamplingParams


@dataclass(slots=True)
class BatchEntry:
    """One conversation's part of a step: tokens to append at their RoPE positions, and what to return for them."""

    cache: SessionCache
    token_ids: list[int]
    positions: list[int]
    capture: str | None = None  # aggregation mode of the last token's attention row; None: no row
    logits: bool = True  # the last token's logits (False for a prefill chunk that is not a prompt's last)
    # Recall: indices among `token_ids` whose queries every layer keeps (needs `capture`; engine/recall.py).
    probe: tuple[int, ...] = ()
    # The reply's sampling settings, for an engine that samples inside its own step (vLLM); this engine ignores them.
    sampling: SamplingParams | None = None


class Batch:
    """The plan of one packed forward, shared by the cache and the attention function of every layer."""

    def __init__(self, entries: list[BatchEntry], sinks: list[CaptureSink | None]) -> None:
        self.entries = entries
        self.sinks = sinks
        self.spans: list[tuple[int, int]] = []
        start = 0
        for entry in entries:
            self.spans.append((start, start + len(entry.token_ids)))
            start += len(entry.token_ids)
        # Filled layer by layer by BatchCache.update, read by the attention function of the same layer.
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []


class BatchCache(Cache):
    """What the model calls `cache`: each layer's update goes to every conversation's own layer."""

    def __init__(self, batch: Batch, num_layers: int) -> None:
        # The placeholder layers are never written; transformers only asks them about sizes when building masks,
        # which the attention function does not use (it derives causality per conversation itself).
        super().__init__(layers=[DynamicLayer() for _ in range(num_layers)])
        self.batch = batch

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        batch = self.batch
        keys: list[torch.Tensor] = []
        values: list[torch.Tensor] = []
        for entry, (start, end) in zip(batch.entries, batch.spans, strict=True):
            new_keys, new_values = key_states.narrow(2, start, end - start), value_states.narrow(2, start, end - start)
            k, v = entry.cache.layers[layer_idx].update(new_keys, new_values)
            keys.append(k)
            values.append(v)
        batch.keys, batch.values = keys, values
        return key_states, value_states
