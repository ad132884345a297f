"""Changes to a session's dictionary on a Draft: appending entries, scoring a step, pruning, brightness batches.

Pure functions of (draft, inputs): the engine runs them again on fresh state when a concurrent writer got there
first, so they must not keep anything outside the draft.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from services.tracker import columns, native, policies, pruning, recall, scoring, segmentation
from services.tracker.state import ROLE_CODES, Draft

# A brightness event carries at most this many positions. When more scores changed, half the slots go to the largest
# changes and half to a window that rotates over the changed positions with the step, so every position is refreshed
# at least every ceil(changed / half) steps: bounded events, bounded staleness, and no extra state to store.
BRIGHTNESS_MAX_POSITIONS = 512
# Changes smaller than this are not worth an update.
BRIGHTNESS_EPSILON = 1e-4
SCORE_DECIMALS = 6


def append_tokens(draft: Draft, role: str, turn: int, ids: list[int], pieces: list[str], continues: bool) -> None:
    """Appends one message's tokens (or a reply's next tokens, `continues`) at the next positions."""
    if not ids:
        return
    state = draft.state
    meta, arrays = state.meta, state.arrays
    start_id: int | None = None
    start_closed = False
    if continues and state.size and int(arrays["turn"][-1]) == turn:
        start_id, start_closed = int(arrays["sent"][-1]), bool(arrays["closes"][-1])
    if len(ids) == 1:  # a reply's next token, every step: scalars, not arrays
        _append_one(draft, role, turn, ids[0], pieces[0], start_id, start_closed)
        return
    sentences = segmentation.sentence_ids(pieces, start_id, start_closed)
    new_sentence = np.ones(len(ids), dtype=np.int64)
    new_sentence[1:] = np.diff(np.asarray(sentences)) != 0
    if start_id is not None:
        new_sentence[0] = int(start_closed)
    gsent = meta.next_gsent - 1 + np.cumsum(new_sentence)
    count = len(ids)
    positions = np.arange(meta.next_position, meta.next_position + count, dtype=np.int64)
    initial = state.settings.initial_score
    draft.append_entries(
        {
            "pos": positions,
            "tid": np.asarray(ids),
            "turn": np.full(count, turn),
            "sent": np.asarray(sentences),
            "gsent": gsent,
            "role": np.full(count, ROLE_CODES[role]),
            "closes": np.asarray([segmentation.closes_sentence(p) for p in pieces]),
            "deleted": np.zeros(count),
            "score": np.full(count, initial),
        },
        pieces,
    )
    meta.next_position += count
    meta.next_gsent += int(new_sentence.sum())
    for i in range(count):
        draft.emit(
            "token",
            {
                "position": int(positions[i]),
                "token": pieces[i],
                "token_id": int(ids[i]),
                "role": role,
                "turn_id": turn,
                "sentence_id": int(sentences[i]),
                "score": initial,
            },
        )


def _append_one(
    draft: Draft, role: str, turn: int, token_id: int, piece: str, start_id: int | None, start_closed: bool
) -> None:
    """`append_tokens` for one token: the same entry and event, without building arrays of length one."""
    state = draft.state
    meta = state.meta
    sentence = segmentation.next_sentence_id(start_id, start_closed)
    opens = start_id is None or start_closed
    position = meta.next_position
    initial = state.settings.initial_score
    token_id = int(token_id)
    draft.append_entry(
        (position, token_id, turn, sentence, meta.next_gsent - 1 + opens, ROLE_CODES[role],
         segmentation.closes_sentence(piece), 0, initial),
        piece,
    )  # fmt: skip
    meta.next_position += 1
    meta.next_gsent += opens
    draft.emit(
        "token",
        {
            "position": position,
            "token": piece,
            "token_id": token_id,
            "role": role,
            "turn_id": turn,
            "sentence_id": sentence,
            "score": initial,
        },
    )


def score_step(draft: Draft, attention: NDArray[np.float32]) -> NDArray[np.intp]:
    """Updates every active token's score from one frame's aggregated attention (length checked by the caller);
    returns the entries whose score moved by more than BRIGHTNESS_EPSILON, for `brightness`."""
    state = draft.state
    rule = policies.score_rule(state.settings)
    active = state.active_index()
    scores = columns.copy(state.arrays["score"])  # with room for the token this step appends
    live = columns.empty(len(active), np.float64)  # the new scores in active order, as the store keeps them
    changed = scoring.update_active(
        scores,
        state.arrays["pos"],
        None if len(active) == len(scores) else active,  # nothing pruned yet: no gather and scatter
        attention,
        boost=rule.boost,
        distance_mode=rule.distance_mode,
        min_distance=rule.min_distance,
        distance_scale=rule.distance_scale,
        decay_mode=rule.decay_mode,
        decay_rate=rule.decay_rate,
        epsilon=BRIGHTNESS_EPSILON,
        live=live,
    )
    draft.set_array("score", scores, live)
    return changed


@dataclass(frozen=True, slots=True)
class Pruned:
    positions: list[int]
    sentences: int


def protected_mask(draft: Draft, active: NDArray[np.intp]) -> NDArray[np.bool_]:
    """System turns, the latest user message and the reply being generated are never pruned; nor, while that reply
    is generated, the sentences recalled for it."""
    arrays, meta = draft.state.arrays, draft.state.meta
    turns = arrays["turn"][active]
    mask = arrays["role"][active] == ROLE_CODES["system"]
    mask |= turns == meta.last_user_turn
    if meta.gen_turn >= 0:
        mask |= turns == meta.gen_turn
    if meta.recalled_keys:
        mask |= np.isin(arrays["gsent"][active], _keys(meta.recalled_keys))
    return np.asarray(mask, dtype=bool)


def _keys(text: str) -> NDArray[np.int64]:
    return np.asarray([int(k) for k in text.split(",") if k], dtype=np.int64)


def prune(draft: Draft, ranking: NDArray[np.float64] | None = None) -> Pruned:
    """Deletes the dimmest prunable sentences while the active count exceeds the budget. `ranking` (one value per
    active entry) replaces the policy's order: recall makes its room by the probe's attention (see `bring_back`)."""
    state = draft.state
    budget = state.settings.max_context_tokens
    active = state.active_index()
    if budget <= 0 or len(active) <= budget:
        return Pruned([], 0)
    arrays, meta = state.arrays, state.meta
    if ranking is not None:
        keys, maxima, firsts, sizes = pruning.runs(arrays["gsent"][active], ranking, ~protected_mask(draft, active))
        order = maxima
    elif native.available() and not meta.recalled_keys:  # the kernel knows the turn protections only
        keys, maxima, firsts, sizes = native.sentence_runs(
            active, arrays["gsent"], arrays["score"], arrays["role"], arrays["turn"], meta.last_user_turn, meta.gen_turn
        )
    else:
        keys, maxima, firsts, sizes = pruning.runs(
            arrays["gsent"][active], arrays["score"][active], ~protected_mask(draft, active)
        )
    if ranking is None:
        order = policies.priorities(state.settings, state.session_id, keys, maxima)
    chosen = pruning.pick(len(active), budget, order, sizes)
    if not chosen:
        return Pruned([], 0)
    deleted = columns.copy(arrays["deleted"])
    all_positions: list[int] = []
    ranges: list[tuple[int, int]] = []
    for run in chosen:
        members = active[firsts[run] : firsts[run] + sizes[run]]
        first, count = int(members[0]), len(members)
        if int(members[-1]) - first + 1 == count:  # a sentence's entries are consecutive: one range
            deleted[first : first + count] = 1
            ranges.append((first, count))
        else:  # a restored dictionary (an edited export) may hold a sentence with some entries deleted already
            deleted[members] = 1
            ranges.extend((int(m), 1) for m in members)
        positions = arrays["pos"][members].tolist()
        all_positions.extend(positions)
        draft.emit(
            "pruned",
            {
                "positions": positions,
                "turn_id": int(arrays["turn"][members[0]]),
                "sentence_id": int(arrays["sent"][members[0]]),
            },
        )
    draft.patch_array("deleted", deleted, ranges)
    state.meta.pruned_tokens += len(all_positions)
    state.meta.pruned_sentences += len(chosen)
    all_positions.sort()
    return Pruned(all_positions, len(chosen))


@dataclass(frozen=True, slots=True)
class Recalled:
    positions: list[int]  # ascending
    token_ids: list[int]
    sentences: int
    ignored: int  # probed positions that are not pruned entries of this session
    ranking: NDArray[np.float64] | None = None  # the probe's attention per active entry now, for `prune`


def bring_back(
    draft: Draft,
    cold_positions: NDArray[np.int64],
    cold_scores: NDArray[np.float64],
    active_scores: NDArray[np.float64],
) -> Recalled:
    """Brings back the pruned sentences the probe's query attends to more than to the dimmest active prunable one
    (services/tracker/recall.py): un-deletes them, scores them and protects them until the reply ends. The caller
    checks the lengths; positions that are not deleted entries are ignored (and counted).

    The room they need is then made by `prune(draft, ranking)` with the probe's attention: a recalled sentence takes
    the place of the ones it beat. (Pruning by the policy's scores here would evict whatever is dimmest by brightness,
    which may be just what this query needs.)"""
    state = draft.state
    arrays, meta, settings = state.arrays, state.meta, state.settings
    pos, deleted = arrays["pos"], arrays["deleted"].astype(bool)
    index = np.searchsorted(pos, cold_positions)
    valid = index < state.size
    valid[valid] = (pos[index[valid]] == cold_positions[valid]) & deleted[index[valid]]
    ignored = int((~valid).sum())
    order = np.argsort(index[valid], kind="stable")
    scored, scores = index[valid][order], cold_scores[valid][order]
    found = recall.candidates(arrays["gsent"], deleted, scored, scores)
    active = state.active_index()
    protected = protected_mask(draft, active)
    threshold = recall.bar(arrays["gsent"][active], active_scores, ~protected)
    budget = settings.max_context_tokens
    room = budget - int(protected.sum()) if budget > 0 else state.size
    chosen = recall.choose(found, threshold, room, settings.recall_max_sentences)
    if not chosen:
        return Recalled([], [], 0, ignored)
    keys = found.keys[chosen]
    members = np.flatnonzero(np.isin(arrays["gsent"], keys) & deleted)
    # A recalled token's score takes one update from the attention it was just given (0 for a token the worker no
    # longer held), under the policy's own rule, at its distance from the probing query.
    attention = np.zeros(members.size)
    given = np.isin(scored, members)
    attention[np.searchsorted(members, scored[given])] = scores[given]
    rule = policies.score_rule(settings)
    distance = (meta.next_position - 1) - pos[members]
    weights = scoring.distance_weights(distance, rule.distance_mode, rule.min_distance, rule.distance_scale)
    new_scores = columns.copy(arrays["score"])
    new_scores[members] = scoring.update_scores(
        arrays["score"][members], rule.boost * weights * attention, rule.decay_mode, rule.decay_rate
    )
    restored = columns.copy(arrays["deleted"])
    restored[members] = 0
    ranges = [(int(m), 1) for m in members]
    draft.patch_array("score", new_scores, ranges)
    draft.patch_array("deleted", restored, ranges)
    for key in keys:
        sentence = members[arrays["gsent"][members] == key]
        draft.emit(
            "recalled",
            {
                "positions": pos[sentence].tolist(),
                "turn_id": int(arrays["turn"][sentence[0]]),
                "sentence_id": int(arrays["sent"][sentence[0]]),
                "scores": np.round(new_scores[sentence], SCORE_DECIMALS).tolist(),
            },
        )
    meta.recalled_keys = ",".join(str(int(k)) for k in sorted(keys))
    meta.pruned_tokens -= int(members.size)
    meta.recalled_tokens += int(members.size)
    meta.recalled_sentences += len(chosen)
    probed = np.zeros(state.size)
    probed[active] = active_scores
    probed[scored] = scores
    ranking = probed[state.active_index()]
    return Recalled(pos[members].tolist(), arrays["tid"][members].tolist(), len(chosen), ignored, ranking)


def brightness(draft: Draft, previous: NDArray[np.float64], changed: NDArray[np.intp], step: int) -> None:
    """Emits the scores this step changed (`changed` from `score_step`; `previous` holds the scores before it),
    bounded as described above. Only active tokens are rescored and pruning comes after this, so `changed` holds
    no deleted token."""
    state = draft.state
    scores = state.arrays["score"]
    if changed.size == 0:
        return
    if changed.size > BRIGHTNESS_MAX_POSITIONS:
        half = BRIGHTNESS_MAX_POSITIONS // 2
        moved = np.abs(scores[changed] - previous[changed])
        chosen = np.zeros(changed.size, dtype=bool)  # a mask keeps position order without sorting the union
        chosen[np.argpartition(moved, -half)[-half:]] = True
        start = (step * half) % changed.size
        chosen[(start + np.arange(half)) % changed.size] = True
        changed = changed[chosen]
    draft.emit(
        "brightness",
        {
            "step": step,
            "turn_id": state.meta.gen_turn,
            "positions": state.arrays["pos"][changed].tolist(),
            "scores": np.round(scores[changed], SCORE_DECIMALS).tolist(),
        },
    )
