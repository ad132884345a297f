"""Choosing what to prune: whole sentences, lowest maximum score first, ties to the oldest (DESIGN.md 3.4).

Removing one sentence does not change any other sentence's maximum, so the greedy rule ("prune the lowest, repeat
while over budget") is the same as sorting the prunable sentences once and taking the shortest prefix that brings the
active count within budget.

The sentences are described as runs: per prunable sentence, oldest first, its key, its maximum score, the index of
its first token among the active tokens and its size. `runs` computes them with numpy; the tracker's C kernel
(`native.sentence_runs`) computes the same in one pass.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

Runs = tuple[NDArray[np.int64], NDArray[np.float64], NDArray[np.int64], NDArray[np.int64]]


def runs(sentence_keys: NDArray[np.int64], scores: NDArray[np.float64], prunable: NDArray[np.bool_]) -> Runs:
    """(keys, maxima, first index, size) of each prunable sentence, given the active tokens in position order: each
    token's sentence key (a number that increases with the sentence's age and is shared by its tokens), its score and
    whether its sentence may be pruned. A sentence's tokens are contiguous and all prunable or all protected."""
    where = np.flatnonzero(prunable)
    if where.size == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, np.zeros(0, dtype=np.float64), empty, empty
    keys = sentence_keys[where]
    boundary = np.empty(len(keys), dtype=bool)
    boundary[0] = True
    np.not_equal(keys[1:], keys[:-1], out=boundary[1:])
    starts = np.flatnonzero(boundary)
    maxima = np.maximum.reduceat(scores[where], starts)
    sizes = np.diff(starts, append=len(keys))
    return keys[starts], maxima, where[starts], sizes


def pick(active_count: int, budget: int, maxima: NDArray[np.float64], sizes: NDArray[np.int64]) -> list[int]:
    """Indices of the runs to prune, in pruning order (runs given oldest first)."""
    excess = active_count - budget
    if budget <= 0 or excess <= 0 or len(maxima) == 0:
        return []
    # Usually one sentence covers the excess (a step adds one token): the first minimum is the oldest of the lowest.
    first = int(np.argmin(maxima))
    if sizes[first] >= excess:
        return [first]
    chosen: list[int] = []
    removed = 0
    for index in np.argsort(maxima, kind="stable"):  # stable: ties stay oldest first
        if removed >= excess:
            break
        chosen.append(int(index))
        removed += int(sizes[index])
    return chosen


def choose(
    active_count: int,
    budget: int,
    sentence_keys: NDArray[np.int64],
    scores: NDArray[np.float64],
    prunable: NDArray[np.bool_],
) -> list[int]:
    """Sentence keys to prune, in pruning order (the arrays as for `runs`)."""
    if budget <= 0 or active_count <= budget:
        return []
    keys, maxima, _, sizes = runs(sentence_keys, scores, prunable)
    return [int(keys[index]) for index in pick(active_count, budget, maxima, sizes)]
