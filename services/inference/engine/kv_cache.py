"""One session's KV cache: growable layers (one per model layer), plus the RoPE position and token of each slot.

transformers' `DynamicLayer` concatenates on every step, copying the whole cache each token. `SlotLayer` appends into
preallocated headroom instead, and evicts by compacting survivors in place, so neither decode nor pruning reallocates.
Slot i of every layer holds the token at `positions[i]`; positions ascend but may have gaps (pruned tokens).
"""

from __future__ import annotations

from typing import Any

import torch
from transformers.cache_utils import DynamicLayer

from .cold import ColdTier

_GROWTH = 1.25  # headroom factor when a layer must grow: bounded waste, amortised O(1) appends
_MIN_CHUNK = 64  # slots


class SlotLayer(DynamicLayer):
    """A `DynamicLayer` whose keys/values are views into a larger buffer [b, kv_heads, capacity, head_dim]."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._key_buf: torch.Tensor | None = None
        self._value_buf: torch.Tensor | None = None

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.dtype, self.device = key_states.dtype, key_states.device
        self._key_buf = key_states.new_empty((*key_states.shape[:2], 0, key_states.shape[3]))
        self._value_buf = value_states.new_empty((*value_states.shape[:2], 0, value_states.shape[3]))
        self.keys, self.values = self._key_buf, self._value_buf
        self.is_initialized = True

    @property
    def length(self) -> int:
        return 0 if self.keys is None else int(self.keys.shape[-2])

    @property
    def capacity(self) -> int:
        return 0 if self._key_buf is None else int(self._key_buf.shape[-2])

    def _reserve(self, needed: int) -> None:
        assert self._key_buf is not None and self._value_buf is not None
        if needed <= self.capacity:
            return
        capacity = max(needed, int(self.capacity * _GROWTH), self.capacity + _MIN_CHUNK)
        n = self.length
        for name in ("_key_buf", "_value_buf"):
            old: torch.Tensor = getattr(self, name)
            new = old.new_empty((*old.shape[:2], capacity, old.shape[3]))
            new[:, :, :n] = old[:, :, :n]
            setattr(self, name, new)

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        assert self.keys is not None
        n, m = self.keys.shape[-2], key_states.shape[-2]
        self._reserve(n + m)
        assert self._key_buf is not None and self._value_buf is not None
        # narrow/copy_ rather than slice assignment: this runs per conversation per layer every step, and Python
        # indexing costs several microseconds a call.
        self._key_buf.narrow(2, n, m).copy_(key_states)
        self._value_buf.narrow(2, n, m).copy_(value_states)
        self.keys, self.values = self._key_buf.narrow(2, 0, n + m), self._value_buf.narrow(2, 0, n + m)
        return self.keys, self.values

    def keep(self, slots: torch.Tensor, start: int = 0) -> None:
        """Compacts the listed slots (ascending, all >= `start`) to `start` onwards, in place; slots before `start`
        stay where they are and the rest are dropped. Only the part from the first dropped slot moves."""
        if self._key_buf is None or self._value_buf is None:
            return
        end = start + int(slots.numel())
        # index_select makes the survivors' copy first, so the overlapping in-place write is safe.
        self._key_buf[:, :, start:end] = self._key_buf[:, :, : self.length].index_select(2, slots)
        self._value_buf[:, :, start:end] = self._value_buf[:, :, : self.length].index_select(2, slots)
        self.keys, self.values = self._key_buf[:, :, :end], self._value_buf[:, :, :end]

    def insert(self, start: int, order: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Re-inserts entries [b, kv_heads, m, head_dim] among the slots from `start` on: the new tail is
        `cat(held[start:], new)[order]` (the caller's merge by position). Slots before `start` do not move."""
        assert self._key_buf is not None and self._value_buf is not None
        n, m = self.length, int(keys.shape[-2])
        self._reserve(n + m)
        for name, new in (("_key_buf", keys), ("_value_buf", values)):
            buf: torch.Tensor = getattr(self, name)
            # cat copies, so writing the merged tail over the buffer it was read from is safe.
            tail = torch.cat([buf.narrow(2, start, n - start), new], dim=2).index_select(2, order)
            buf.narrow(2, start, n + m - start).copy_(tail)
        self.keys, self.values = self._key_buf.narrow(2, 0, n + m), self._value_buf.narrow(2, 0, n + m)

    def truncate(self, length: int) -> None:
        """Drops slots from `length` on (used to undo a forward that failed half-way)."""
        if self._key_buf is not None and self._value_buf is not None and length < self.length:
            self.keys, self.values = self._key_buf[:, :, :length], self._value_buf[:, :, :length]

    def install(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        self.lazy_initialization(keys, values)
        self.update(keys, values)

    @property
    def nbytes(self) -> int:
        if self._key_buf is None or self._value_buf is None:
            return 0
        return int(self._key_buf.nbytes + self._value_buf.nbytes)


class SessionCache:
    """The KV cache of one session, and which token at which RoPE position each slot holds; `cold` keeps what was
    pruned while recall is on (engine/cold.py)."""

    def __init__(self, num_layers: int) -> None:
        self.layers = [SlotLayer() for _ in range(num_layers)]
        self.positions: list[int] = []
        self.token_ids: list[int] = []
        self.cold = ColdTier()

    def __len__(self) -> int:
        return len(self.positions)

    @property
    def nbytes(self) -> int:
        """Bytes held on the model's device, headroom included: what a memory budget must count."""
        return sum(layer.nbytes for layer in self.layers)

    @property
    def next_position(self) -> int:
        """The RoPE position the next token takes: the largest held + 1 (gaps from pruning are kept)."""
        return self.positions[-1] + 1 if self.positions else 0

    def check_order(self) -> None:
        """Slot order must be position order: the attention function's causality by slot relies on it."""
        if any(b <= a for a, b in zip(self.positions, self.positions[1:], strict=False)):
            raise RuntimeError("the cache's positions are not ascending: causality by slot would be wrong")

    def truncate(self, length: int) -> None:
        for layer in self.layers:
            layer.truncate(length)
        del self.positions[length:]
        del self.token_ids[length:]

    def sync_plan(self, positions: list[int], token_ids: list[int]) -> tuple[list[int], list[int], list[int]] | None:
        """How to make this cache hold exactly a context: (positions to evict, suffix positions, suffix ids), or None
        when only a rebuild can (the kept entries are not a prefix of the context, or a token differs)."""
        wanted = set(positions)
        evict = [p for p in self.positions if p not in wanted]
        gone = set(evict)
        kept = [(p, t) for p, t in zip(self.positions, self.token_ids, strict=True) if p not in gone]
        if len(kept) > len(positions):
            return None
        for (p, t), (q, u) in zip(kept, zip(positions, token_ids, strict=True), strict=False):
            if p != q or t != u:
                return None
        return evict, positions[len(kept) :], token_ids[len(kept) :]

    def clear(self) -> None:
        """Forgets every slot (the buffers stay allocated for the rebuild that follows); the cold tier stays."""
        self.truncate(0)
