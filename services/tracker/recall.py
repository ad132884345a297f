"""Choosing which pruned sentences come back (DESIGN.md 3.6; formulas in docs/scoring.md "Recall").

After a reply's prompt is prefilled, the worker scores its cold tier against the latest user message's queries: per
query one softmax over the active and the cold keys of every layer and head, reduced like a captured row, then the
maximum over the queries. Here, with the same probe's attention to every active position:

- a sentence's recall score is the maximum over its cold tokens (pruning ranks sentences by their maximum too);
- the bar is the dimmest active prunable sentence: the lowest maximum among them, under the same query;
- sentences that beat the bar come back, best first, at most `recall_max_sentences`, and never more tokens than
  the budget leaves beside the protected ones (so pruning can still meet the budget);
- the room they need is made by pruning the active sentences this query attends to least (not by the policy's
  scores): a recalled sentence takes the place of those it beat.

Pure functions of arrays; `dictionary.bring_back` applies the choice to a draft.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from services.tracker import pruning


@dataclass(frozen=True, slots=True)
class Candidates:
    keys: NDArray[np.int64]  # sentence keys (gsent) of the cold sentences that were scored
    scores: NDArray[np.float64]  # each one's recall score (maximum over its scored tokens)
    sizes: NDArray[np.int64]  # each one's deleted token count (all of them come back, scored or not)


def candidates(
    gsent: NDArray[np.int64], deleted: NDArray[np.bool_], scored: NDArray[np.intp], scores: NDArray[np.float64]
) -> Candidates:
    """Per cold sentence among the scored entries (`scored`: dictionary indices of deleted entries, ascending)."""
    if scored.size == 0:
        empty = np.zeros(0, dtype=np.int64)
        return Candidates(empty, np.zeros(0), empty)
    keys, maxima, _, _ = pruning.runs(gsent[scored], scores, np.ones(scored.size, dtype=bool))
    members = np.isin(gsent, keys) & deleted
    unique, sizes = np.unique(gsent[members], return_counts=True)
    return Candidates(keys, maxima, sizes[np.searchsorted(unique, keys)].astype(np.int64))


def bar(gsent: NDArray[np.int64], active_scores: NDArray[np.float64], prunable: NDArray[np.bool_]) -> float:
    """The dimmest active prunable sentence's maximum under the probe's query; +inf when none may be pruned (then a
    recalled sentence could displace nothing)."""
    _, maxima, _, _ = pruning.runs(gsent, active_scores, prunable)
    return float(maxima.min()) if maxima.size else float("inf")


def choose(found: Candidates, threshold: float, room: int, limit: int) -> list[int]:
    """Indices into `found` of the sentences that come back: above `threshold`, best first, at most `limit`, their
    tokens within `room` (a sentence that does not fit is passed over for a smaller one)."""
    chosen: list[int] = []
    used = 0
    for index in np.argsort(-found.scores, kind="stable"):
        if len(chosen) >= limit or found.scores[index] <= threshold:
            break
        size = int(found.sizes[index])
        if used + size > room:
            continue
        chosen.append(int(index))
        used += size
    return chosen
