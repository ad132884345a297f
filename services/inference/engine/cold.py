"""The cold tier: the keys and values of a session's pruned tokens, kept on the host so they can be put back exactly.

Positions are never reused, so a pruned token's keys (RoPE already applied at its own position) and values stay valid:
recall re-inserts them into the hot cache with no re-prefill. The tier is a list of chunks, one per eviction, each a
single [layers, 2 (key, value), kv_heads, tokens, head_dim] tensor: an eviction appends one chunk (no copy of what is
already cold), and only recall, which is rare, splits chunks.

Under a worker's byte budget the oldest chunks go first (`shed`); their positions are remembered as `dropped`, so a
worker neither scores them nor recomputes them on every turn: they no longer come back, except as part of a sentence
whose other tokens are still held, for which the missing ones are recomputed from the dictionary's ids.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(slots=True)
class ColdChunk:
    positions: list[int]  # ascending
    token_ids: list[int]
    kv: torch.Tensor  # [layers, 2, kv_heads, len(positions), head_dim], on the host
    recomputed: bool = False  # computed again from the dictionary's ids, not the keys and values it was pruned with

    @property
    def nbytes(self) -> int:
        return int(self.kv.nbytes)


class ColdTier:
    def __init__(self) -> None:
        self.chunks: list[ColdChunk] = []  # oldest first
        self.dropped: set[int] = set()

    def __len__(self) -> int:
        return sum(len(c.positions) for c in self.chunks)

    @property
    def nbytes(self) -> int:
        return sum(c.nbytes for c in self.chunks)

    def positions(self) -> list[int]:
        return sorted(p for c in self.chunks for p in c.positions)

    def held(self) -> set[int]:
        return {p for c in self.chunks for p in c.positions}

    def add(self, chunk: ColdChunk) -> None:
        if chunk.positions:
            self.chunks.append(chunk)
            self.dropped.difference_update(chunk.positions)

    def all(self) -> ColdChunk | None:
        """Every cold token as one chunk in position order (for scoring and export), `recomputed` when any part is;
        None when the tier is empty."""
        if not self.chunks:
            return None
        positions = [p for c in self.chunks for p in c.positions]
        token_ids = [t for c in self.chunks for t in c.token_ids]
        kv = torch.cat([c.kv for c in self.chunks], dim=3) if len(self.chunks) > 1 else self.chunks[0].kv
        order = sorted(range(len(positions)), key=positions.__getitem__)
        index = torch.tensor(order, dtype=torch.long)
        recomputed = any(c.recomputed for c in self.chunks)
        return ColdChunk(
            [positions[i] for i in order], [token_ids[i] for i in order], kv.index_select(3, index), recomputed
        )

    def take(self, positions: set[int]) -> ColdChunk | None:
        """Removes the listed positions that are held and returns them as one chunk in position order."""
        taken: list[ColdChunk] = []
        kept: list[ColdChunk] = []
        for chunk in self.chunks:
            inside = [j for j, p in enumerate(chunk.positions) if p in positions]
            if not inside:
                kept.append(chunk)
                continue
            outside = [j for j, p in enumerate(chunk.positions) if p not in positions]
            taken.append(_subset(chunk, inside))
            if outside:
                kept.append(_subset(chunk, outside))
        self.chunks = kept
        if not taken:
            return None
        merged = ColdTier()
        merged.chunks = taken
        return merged.all()

    def shed(self, nbytes: int) -> int:
        """Drops the oldest chunks until at least `nbytes` are freed (or none is left); returns the bytes freed."""
        freed = 0
        while self.chunks and freed < nbytes:
            chunk = self.chunks.pop(0)
            self.dropped.update(chunk.positions)
            freed += chunk.nbytes
        return freed

    def clear(self) -> None:
        self.chunks = []
        self.dropped = set()


def _subset(chunk: ColdChunk, index: list[int]) -> ColdChunk:
    slots = torch.tensor(index, dtype=torch.long)
    return ColdChunk(
        [chunk.positions[j] for j in index],
        [chunk.token_ids[j] for j in index],
        chunk.kv.index_select(3, slots),
        chunk.recomputed,
    )
