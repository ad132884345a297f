"""Choosing what to prune: whole sentences, lowest maximum score first, ties to the oldest (DESIGN.md 3.4).

Removing one sentence does not change any other sentence's maximum, so the greedy rule ("prune the lowest, repeat
while over budget") is the same as sorting the prunable sentences once and taking the shortest prefix that brings the
active count within budget.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray


def choose(
    active_count: int,
    budget: int,
    sentence_keys: NDArray[np.int64],
    scores: NDArray[np.float64],
    prunable: NDArray[np.bool_],
) -> list[int]:
    """Sentence keys to prune, in pruning order.

    The arrays describe the active tokens in position order: each token's sentence key (a number that increases with
    the sentence's age and is shared by its tokens), its score, and whether its sentence may be pruned.
    """
    if budget <= 0 or active_count <= budget or not prunable.any():
        return []
    keys = sentence_keys[prunable]
    token_scores = scores[prunable]
    # Tokens of a sentence are contiguous in position order: split the runs.
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
    maxima = np.maximum.reduceat(token_scores, starts)
    sizes = np.diff(np.r_[starts, len(keys)])
    run_keys = keys[starts]
    # lexsort sorts by the last key first: lowest maximum, then oldest sentence.
    order = np.lexsort((run_keys, maxima))
    excess = active_count - budget
    chosen: list[int] = []
    removed = 0
    for index in order:
        if removed >= excess:
            break
        chosen.append(int(run_keys[index]))
        removed += int(sizes[index])
    return chosen
