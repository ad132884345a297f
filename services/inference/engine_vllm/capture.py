"""Attention capture inside vLLM's batch: a forward hook on every layer's `Attention` module.

The hook sees what vLLM's attention sees: the batch's queries after RoPE, the forward context's metadata
(`query_start_loc`, `seq_lens`, `block_table`) and the layer's paged KV cache, which by then holds the step's new keys.
For the requests that asked for a row it takes each one's last query of the step, reads their keys back from their
blocks (padded to the longest, masked beyond each one's length) and computes softmax(q·Kᵀ·scale) per query head (KV
heads shared by their group, as GQA does): one gather, one matmul and one softmax per layer for the whole batch. The
rows are the native engine's; after the last layer they are reduced in each request's mode on the model's device
(`engine.capture.reduce`) and only the reduced vectors cross to the host.

Reading keys back needs the cache's memory layout, which is the attention backend's (and, on CPUs, the kernel ISA's)
private business. `KEY_LAYOUTS` names the ones known here; `check_layout` proves the one in use at start-up by
comparing the keys a step wrote with the keys the layer was given, so that an unknown layout is refused clearly
instead of yielding wrong rows.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from services.inference.engine.capture import reduce

# Reads the keys of the listed blocks [requests, n] as [requests, n, kv_heads, head_dim, block_size]: transposed per
# block, which is how q·Kᵀ wants them (and how vLLM's CPU kernels store them), and only the keys are copied.
KeyReader = Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]


def _cpu_vec_keys(kv_cache: torch.Tensor, blocks: torch.Tensor, head_dim: int) -> torch.Tensor:
    """vLLM's CPU kernels (ISA `vec`, `vec16`): [blocks, kv_heads, block_size, 2·head_dim], where each block and head
    holds its keys transposed ([head_dim, block_size]) followed by its values ([block_size, head_dim])."""
    total, kv_heads, block_size, _ = kv_cache.shape
    keys_t = kv_cache.view(total, kv_heads, 2, head_dim, block_size)[:, :, 0]  # a view: the values are never read
    r, n = blocks.shape
    return keys_t.index_select(0, blocks.reshape(-1)).reshape(r, n, kv_heads, head_dim, block_size)


KEY_LAYOUTS: dict[tuple[str, str], KeyReader] = {
    ("CPUAttentionBackendImpl", "vec"): _cpu_vec_keys,
    ("CPUAttentionBackendImpl", "vec16"): _cpu_vec_keys,
}


_OFF = (None, 0, 0.0, -1, (-1, -1))  # how vLLM's backends say a feature is off


class CaptureUnsupported(RuntimeError):
    """This vLLM build's attention cannot be read back here: capture (and so this engine) is refused at start-up."""


@dataclass
class Wanted:
    """One request's capture: its mode, and its rows by context length (a step that only prefilled part of a
    prompt leaves a row no token pairs with: the engine takes the row of the length its token was sampled at)."""

    mode: str
    rows: dict[int, tuple[np.ndarray, np.ndarray | None]] = field(default_factory=dict)

    def take(self, length: int) -> tuple[np.ndarray, np.ndarray | None] | None:
        row = self.rows.pop(length, None)
        for stale in [n for n in self.rows if n < length]:
            del self.rows[stale]
        return row


@dataclass
class Step:
    """One forward's capturing requests: ids, context lengths, last-query rows, blocks [R, n], the padding mask
    [R, 1, n·block_size], and each layer's probabilities [R, heads, n·block_size] as the layers run."""

    ids: list[str]
    lengths: list[int]
    last: torch.Tensor
    blocks: torch.Tensor
    beyond: torch.Tensor
    layers: list[torch.Tensor] = field(default_factory=list)


class Capture:
    """Hooks every attention layer of `model`; `wanted` maps vLLM's (internal) request ids to what they capture.
    `batch_ids` gives the ids of the batch being run, in the order of the attention metadata's rows."""

    def __init__(
        self, model: torch.nn.Module, batch_ids: Callable[[], list[str]], num_heads: int, head_dim: int
    ) -> None:
        from vllm.model_executor.layers.attention.attention import Attention

        self.layers = [m for m in model.modules() if isinstance(m, Attention)]
        if not self.layers:
            raise CaptureUnsupported("the model has no vLLM Attention layers to hook")
        self.batch_ids = batch_ids
        self.num_heads = num_heads
        self.head_dim = head_dim
        self.wanted: dict[str, Wanted] = {}
        self.check: list[float] | None = None  # set while `check_layout` runs: the largest key mismatch per layer
        first = self.layers[0]
        impl = type(first.impl).__name__
        isa = str(getattr(first, "isa", ""))
        reader = KEY_LAYOUTS.get((impl, isa))
        if reader is None:
            raise CaptureUnsupported(
                f"attention capture cannot read this KV cache layout (backend {impl}, isa {isa or 'none'});"
                f" known: {', '.join(f'{b}/{i}' for b, i in KEY_LAYOUTS)}"
            )
        for layer in self.layers:
            for name, why in (
                ("logits_soft_cap", "soft-capped attention"),
                ("sliding_window", "sliding-window attention"),
                ("sinks", "attention sinks"),
                ("alibi_slopes", "ALiBi"),
            ):
                if getattr(layer.impl, name, None) not in _OFF:
                    raise CaptureUnsupported(f"attention capture does not compute rows with {why} yet")
        self.read_keys = reader
        self.scale = float(first.impl.scale)
        self._step: Step | None = None
        self._handles = [layer.register_forward_hook(self._hook(i)) for i, layer in enumerate(self.layers)]

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()

    def _hook(self, index: int) -> Callable[..., None]:
        def hook(module: torch.nn.Module, args: tuple[Any, ...], output: Any) -> None:
            if not self.wanted and self.check is None:
                return
            from vllm.forward_context import get_forward_context

            metadata = get_forward_context().attn_metadata
            if metadata is None:  # a warm-up or dummy forward: no requests
                return
            layer_metadata = metadata[module.layer_name] if isinstance(metadata, dict) else metadata
            with torch.inference_mode():
                self._layer(index, module, args, layer_metadata)

        return hook

    def _layer(self, index: int, module: Any, args: tuple[Any, ...], metadata: Any) -> None:
        query, key = args[0], args[1]
        kv_cache: torch.Tensor = module.kv_cache[0] if isinstance(module.kv_cache, list) else module.kv_cache
        if self.check is not None:
            self.check.append(self._mismatch(kv_cache, key, metadata))
        if index == 0:
            self._step = self._begin(metadata, int(kv_cache.shape[2]))
        step = self._step
        if step is None:
            return
        # Every capturing request at once: its last query of the step against its keys, padded to the longest.
        kv_heads = int(kv_cache.shape[1])
        r = len(step.ids)
        q = query.index_select(0, step.last).reshape(r, 1, kv_heads, -1, self.head_dim).float()
        keys_t = self.read_keys(kv_cache, step.blocks, self.head_dim).float()  # [R, n, kv_heads, head_dim, block]
        # Block by block, as stored: [R, n, kv_heads, group, block]; only these scores (not the keys) are reordered.
        scores = torch.matmul(q, keys_t).permute(0, 2, 3, 1, 4).reshape(r, self.num_heads, -1) * self.scale
        step.layers.append(torch.softmax(scores.masked_fill_(step.beyond, float("-inf")), dim=-1))
        if index == len(self.layers) - 1:
            self._finish(step)
            self._step = None

    def _begin(self, metadata: Any, block_size: int) -> Step | None:
        """At the first layer: the rows of this batch that capture, their last queries, lengths and blocks."""
        rows, ids = [], []
        for row, request_id in enumerate(self.batch_ids()):
            if request_id in self.wanted:
                rows.append(row)
                ids.append(request_id)
        if not rows:
            return None
        device = metadata.seq_lens.device
        index = torch.tensor(rows, dtype=torch.long, device=device)
        lengths = metadata.seq_lens.index_select(0, index).long()
        longest = int(lengths.max())
        blocks = metadata.block_table.index_select(0, index)[:, : math.ceil(longest / block_size)].long()
        span = blocks.shape[1] * block_size
        beyond = torch.arange(span, device=device)[None, None, :] >= lengths[:, None, None]
        last = metadata.query_start_loc.index_select(0, index + 1).long() - 1
        return Step(ids, [int(n) for n in lengths.tolist()], last, blocks, beyond)

    def _finish(self, step: Step) -> None:
        """After the last layer: each request's rows reduced in its mode, on the device, then to the host."""
        stacked = torch.stack(step.layers, dim=1)  # [R, layers, heads, N]
        modes: dict[str, list[int]] = {}
        for i, request_id in enumerate(step.ids):
            modes.setdefault(self.wanted[request_id].mode, []).append(i)
        for mode, members in modes.items():
            index = torch.tensor(members, dtype=torch.long, device=stacked.device)
            chosen = stacked.index_select(0, index)
            vectors = reduce(chosen, mode).cpu().numpy()
            full = chosen.to(torch.float16).cpu().numpy() if mode == "full" else None
            for j, i in enumerate(members):
                n = step.lengths[i]
                self.wanted[step.ids[i]].rows[n] = (vectors[j, :n], full[j, :, :, :n] if full is not None else None)

    def _mismatch(self, kv_cache: torch.Tensor, key: torch.Tensor, metadata: Any) -> float:
        """The largest difference between the keys given to the layer and those read back at their slots."""
        slots = metadata.slot_mapping[: metadata.num_actual_tokens]
        block_size = int(kv_cache.shape[2])
        blocks = torch.unique(torch.div(slots, block_size, rounding_mode="floor"))
        keys_t = self.read_keys(kv_cache, blocks[None], self.head_dim)[0]  # [n, kv_heads, head_dim, block_size]
        where = {int(b): i for i, b in enumerate(blocks.tolist())}
        read = torch.stack([keys_t[where[int(s) // block_size], :, :, int(s) % block_size] for s in slots.tolist()])
        given = key[: len(slots)].reshape(len(slots), keys_t.shape[1], self.head_dim)
        return float((read.float() - given.float()).abs().max())
