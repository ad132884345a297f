"""The registered attention function: the model's own attention over each conversation of a packed batch, plus the
newest query's row of each conversation that asks for it.

Registered with `AttentionInterface` only. Every Llama-, Qwen-, Mistral- and Gemma-style attention module calls it
with keys and values *not* expanded over query heads: query head h reads KV head h // (H / KV). The batch plan
(`batch.Batch`) says which packed queries belong to which conversation and holds, per layer, each conversation's own
keys and values; no mask function is registered, so transformers builds no mask, and each conversation's causality
(and sliding window) is derived here from its own slots.

- Decode (one query): scores, one softmax, output. When capturing, that same softmax is the captured row: the sink
  keeps a reference to it and reduces all layers at once after the forward, so capture adds no pass and no kernel
  per layer.
- Prefill (many queries): torch's fused SDPA, which never materialises the [q, ctx] map. When capturing, the last
  query is left out of the fused call and computed like a decode step, so only its row ever exists.

Causality is by cache slot, which is right because slot order is position order: new tokens are appended with
positions above every held one, and recall re-inserts pruned entries at the slots their positions sort to
(`SlotLayer.insert`), never at the end. So a query attends to exactly the slots holding earlier positions, even when
RoPE positions have gaps after pruning; `SessionCache.check_order` asserts the invariant after every recall.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.nn import functional as F
from transformers import AttentionInterface

from .batch import Batch
from .capture import CaptureSink

ATTENTION_NAME = "haloweave"
BATCH_KWARG = "haloweave_batch"


def register() -> None:
    """Idempotent; called by the engine before loading a model with attn_implementation=ATTENTION_NAME."""
    AttentionInterface.register(ATTENTION_NAME, attention_forward)


def _allowed(q_len: int, kv_len: int, window: int | None, device: torch.device) -> torch.Tensor:
    """Bool [q_len, kv_len]: query i (the slot kv_len - q_len + i) sees slots <= its own, within the sliding window."""
    q_slots = torch.arange(kv_len - q_len, kv_len, device=device)[:, None]
    kv_slots = torch.arange(kv_len, device=device)[None, :]
    allowed = kv_slots <= q_slots
    if window is not None:
        allowed &= kv_slots > q_slots - window
    return allowed


def _layer(module: torch.nn.Module) -> int:
    index = getattr(module, "layer_idx", None)
    if not isinstance(index, int):
        raise RuntimeError(f"{type(module).__name__} has no layer_idx: capture cannot tell its layers apart")
    return index


def _rows(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    mask: torch.Tensor | None,
    softcap: float | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Explicit attention for a few queries with grouped KV heads, never expanding K or V.

    query [b, H, q, d] already scaled, key/value [b, KV, T, d], mask broadcastable to [b, 1, q, T] (True = attend)
    or None.
    Returns the output [b, H, q, d] and the float32 probabilities [b, H, q, T] it was computed from.
    """
    b, heads, q_len, d = query.shape
    kv_heads, kv_len = key.shape[1], key.shape[2]
    group = heads // kv_heads
    grouped = query.reshape(b, kv_heads, group * q_len, d)
    # The arithmetic of transformers' eager attention (scores in the model's dtype, softmax in float32; the scale is
    # in the query), in as few kernels as possible: where decode is bound by kernel launches, each one per layer shows.
    scores = torch.matmul(grouped, key.transpose(-1, -2))  # [b, KV, group*q, T]
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    if mask is not None:
        masked = scores.view(b, kv_heads, group, q_len, kv_len).masked_fill(~mask[:, :, None], float("-inf"))
        scores = masked.view_as(scores)
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32)
    out = torch.matmul(probs if probs.dtype == value.dtype else probs.to(value.dtype), value)  # [b, KV, group*q, d]
    return out.view(b, heads, q_len, d), probs.view(b, heads, q_len, kv_len)


def _fused(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, window: int | None) -> torch.Tensor:
    """torch SDPA with grouped KV heads over an already scaled query; bottom-right causal by slot. [b, H, q, d]."""
    q_len, kv_len = query.shape[2], key.shape[2]
    is_causal = q_len == kv_len and window is None  # SDPA's causal flag is top-left aligned: right only then
    unmasked = is_causal or (q_len == 1 and window is None)  # a single last query sees every slot
    mask = None if unmasked else _allowed(q_len, kv_len, window, query.device)[None, None]
    return F.scaled_dot_product_attention(
        query, key, value, attn_mask=mask, is_causal=is_causal, scale=1.0, enable_gqa=key.shape[1] != query.shape[1]
    )


def _attend(
    layer: int,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    window: int | None,
    softcap: float | None,
    sink: CaptureSink | None,
) -> torch.Tensor:
    """One conversation's scaled queries [1, H, q, d] over its own keys/values [1, KV, T, d]; returns [1, H, q, d]."""
    q_len, kv_len = query.shape[2], key.shape[2]
    if sink is not None and sink.probe:
        # Recall scores the cold tier against these queries after the forward (engine/recall.py); index_select
        # copies, so a prefill's many-query tensor is not kept alive.
        sink.add_query(layer, query[0].index_select(1, sink.probe_index(query.device)))
        sink.softcap = softcap
    if q_len == 1 or softcap is not None:
        # Decode, or a soft-capped model (which fused SDPA cannot express): explicit rows.
        mask = _allowed(q_len, kv_len, window, query.device)[None, None] if q_len > 1 or window is not None else None
        out, probs = _rows(query, key, value, mask, softcap)
        if sink is not None:
            row = probs[0, :, -1]
            # A view of a many-query map would keep the whole map alive in the sink: copy just the row.
            sink.add(layer, row if q_len == 1 else row.clone())
        return out
    if sink is None:
        return _fused(query, key, value, window)
    # Prefill with capture: the first q-1 queries never see the last slot, so they run fused over kv[:-1];
    # the last query runs explicitly over everything and is the only row ever materialised.
    head = _fused(query[:, :, :-1], key[:, :, :-1], value[:, :, :-1], window)
    last_mask = _allowed(1, kv_len, window, query.device)[None, None] if window is not None else None
    tail, probs = _rows(query[:, :, -1:], key, value, last_mask, None)
    sink.add(layer, probs[0, :, -1])
    return torch.cat([head, tail], dim=2)


def attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    sliding_window: int | None = None,
    softcap: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """The AttentionInterface signature; returns ([1, T, H, d], None) for the packed queries of the batch.

    `key`/`value` are the packed new ones; each conversation's whole keys and values come from the batch plan,
    which `BatchCache.update` filled for this layer. `attention_mask` is ignored: no mask function is registered,
    so transformers builds none, and causality is derived per conversation (by slot) here."""
    batch: Batch | None = kwargs.get(BATCH_KWARG)
    if batch is None:
        raise RuntimeError("the haloweave attention runs only inside Engine.forward (it needs the batch plan)")
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    layer = _layer(module)
    # Scaled once for the whole batch rather than once per conversation.
    query = query * scale
    outs = [
        _attend(layer, query.narrow(2, start, end - start), k, v, sliding_window, softcap, sink)
        for (start, end), k, v, sink in zip(batch.spans, batch.keys, batch.values, batch.sinks, strict=True)
    ]
    out = outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)
    return out.transpose(1, 2), None
