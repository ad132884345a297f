"""What every engine shares, whatever runs its forwards: the model's shape, read once from its config, and prefill
and decode as batches of one."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from .batch import BatchEntry

if TYPE_CHECKING:
    from .engine import StepOutput
    from .kv_cache import SessionCache


class EngineBase:
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    kv_bytes_per_token: int  # keys and values of every layer for one token: what a cache grows by per token

    def _read_shape(self, text: Any, torch_dtype: torch.dtype) -> None:
        """`text`: the model's (decoder) text config; grouped-query and explicit head sizes as transformers has them."""
        self.num_layers = int(text.num_hidden_layers)
        self.num_heads = int(text.num_attention_heads)
        self.num_kv_heads = int(getattr(text, "num_key_value_heads", None) or self.num_heads)
        self.head_dim = int(getattr(text, "head_dim", None) or text.hidden_size // self.num_heads)
        self.vocab_size = int(text.vocab_size)
        itemsize = torch.empty((), dtype=torch_dtype).element_size()
        self.kv_bytes_per_token = self.num_layers * 2 * self.num_kv_heads * self.head_dim * itemsize

    def forward(self, entries: list[BatchEntry]) -> list[StepOutput | None]:
        raise NotImplementedError

    def prefill(
        self, cache: SessionCache, token_ids: list[int], positions: list[int], capture: str | None
    ) -> StepOutput:
        """Appends tokens at their RoPE positions; captures only the last query's row. A batch of one."""
        out = self.forward([BatchEntry(cache, token_ids, positions, capture)])[0]
        assert out is not None
        return out

    def decode(self, cache: SessionCache, token_id: int, position: int, capture: str | None) -> StepOutput:
        return self.prefill(cache, [token_id], [position], capture)
