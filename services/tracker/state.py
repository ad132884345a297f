"""A session's state in memory: the dictionary as packed numpy arrays, plus its counters and settings.

Every per-token field is one array in position order (entry i of each array is the same token), which is also how
the store keeps them in Redis: one binary string per field. Token texts live only in Redis (written once, read for
export); the hot path never needs them.

Operations work on a `Draft`: a copy that records what changed (entries appended, arrays rewritten, counters, events)
so that the store can write exactly that in one atomic script, and the cached state is replaced only once the write
succeeded.
"""

from __future__ import annotations

import dataclasses
import operator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from services.tracker import columns
from services.tracker.settings import Settings

ROLE_CODES = {"system": 0, "user": 1, "assistant": 2}
ROLE_NAMES = {code: name for name, code in ROLE_CODES.items()}

# Array name -> little-endian dtype. Written once per entry: pos..closes. Rewritten by steps: score, deleted.
ARRAYS: dict[str, str] = {
    "pos": "<i8",  # position: unique, increasing, never reused
    "tid": "<i4",  # token id
    "turn": "<i4",  # turn id
    "sent": "<i4",  # sentence id within its message
    "gsent": "<i8",  # sentence key: increases with every new sentence of the session (pruning groups by it)
    "role": "u1",
    "closes": "u1",  # 1 when the piece ends its sentence
    "deleted": "u1",
    "score": "<f8",
}


@dataclass(slots=True)
class Meta:
    """Counters and flags; stored as one Redis hash."""

    version: int = 0
    next_position: int = 0
    turns: int = 0  # the next turn id
    next_gsent: int = 0
    last_user_turn: int = -1
    gen_turn: int = -1  # the reply being generated, -1 when none
    job_id: str = ""
    step: int = 0  # the next expected frame step
    cancel: int = 0
    orphaned: int = 0  # the stream of the open generation ended without Finish or Fail
    # Streams opened for the open generation: each Open of the same job (a resume) takes the next, and messages of
    # an earlier stream are refused, so a stale stream can never commit after the one that replaced it.
    attempt: int = 0
    touched: float = 0.0  # when the open generation's stream last spoke (unix seconds): a long silence abandons it
    settings_version: int = 0
    pruned_tokens: int = 0
    pruned_sentences: int = 0
    recalled_tokens: int = 0
    recalled_sentences: int = 0
    # The sentence keys recalled for the reply being generated, comma-separated: protected until it ends.
    recalled_keys: str = ""
    gen_started: float = 0.0
    model: str = ""
    fingerprint: str = ""
    # The last jobs whose reply ended with Finish or Fail, comma-separated: a worker that died before marking such a
    # job done must not run it again (DONE_JOBS_KEPT bounds it; a session runs one job at a time).
    done_jobs: str = ""
    # 1 once the store keeps the active entries' scores in their own column (services.tracker.store).
    live_scores: int = 0

    def to_fields(self, since: Meta | None = None) -> dict[str, str]:
        """Every field, or only those that differ from `since` (a step changes few of them)."""
        values = _meta_values(self)
        if since is None:
            return {name: str(value) for name, value in zip(_META_FIELDS, values, strict=True)}
        before = _meta_values(since)
        return {name: str(value) for name, value, old in zip(_META_FIELDS, values, before, strict=True) if value != old}

    def copy(self) -> Meta:
        """A copy to change (dataclasses.replace inspects the fields on every call: a tenth of a step's Python)."""
        return Meta(*_meta_values(self))

    @classmethod
    def from_fields(cls, raw: dict[str, str]) -> Meta:
        kinds = {f.name: f.type for f in dataclasses.fields(cls)}
        values: dict[str, Any] = {}
        for name, kind in kinds.items():
            if name in raw:
                value = raw[name]
                values[name] = int(value) if kind == "int" else float(value) if kind == "float" else value
        return cls(**values)


_META_FIELDS = tuple(f.name for f in dataclasses.fields(Meta))
_DELETED, _SCORE = list(ARRAYS).index("deleted"), list(ARRAYS).index("score")
_meta_values = operator.attrgetter(*_META_FIELDS)  # every field's value, in field order, in one C call
DONE_JOBS_KEPT = 32


def empty_arrays() -> dict[str, NDArray[Any]]:
    return {name: np.zeros(0, dtype=dtype) for name, dtype in ARRAYS.items()}


@dataclass(slots=True)
class SessionState:
    session_id: str
    meta: Meta
    settings: Settings
    arrays: dict[str, NDArray[Any]] = field(default_factory=empty_arrays)
    _active: tuple[NDArray[Any], NDArray[np.intp]] | None = field(default=None, repr=False, compare=False)

    @property
    def size(self) -> int:
        return int(self.arrays["pos"].shape[0])

    def active_index(self) -> NDArray[np.intp]:
        # Arrays are replaced, never written in place, so the deletion array's identity keys the memo.
        deleted = self.arrays["deleted"]
        if self._active is None or self._active[0] is not deleted:
            self._active = (deleted, np.flatnonzero(deleted == 0))
        return self._active[1]

    def active_count(self) -> int:
        return int(self.size - np.count_nonzero(self.arrays["deleted"]))

    @property
    def generating(self) -> bool:
        return self.meta.gen_turn >= 0

    def draft(self) -> Draft:
        return Draft(
            # The active-index memo travels along: it is keyed by the deletion array's identity, which a draft keeps
            # until it prunes.
            SessionState(self.session_id, self.meta.copy(), self.settings, dict(self.arrays), self._active),
            base_version=self.meta.version,
            base_meta=self.meta,
        )


@dataclass(slots=True)
class Draft:
    """A copy of a state being changed, with the record of what to write."""

    state: SessionState
    base_version: int
    base_meta: Meta | None = None  # what the stored hash holds: only differing fields are written
    appended: int = 0  # entries appended at the end of every array
    texts: list[str] = field(default_factory=list)
    rewritten: set[str] = field(default_factory=set)  # arrays written whole
    # Byte ranges of existing entries to overwrite, per array: (first entry, entry count). A prune marks a few runs of
    # entries deleted; writing those bytes beats rewriting the whole array.
    patched: dict[str, list[tuple[int, int]]] = field(default_factory=dict)
    settings_changed: bool = False
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    # The scores of the active entries in entry order, as the store writes them, when a step produced them in its
    # own pass (None: the store gathers them). Kept through appends, dropped by anything that changes deletions.
    live: NDArray[np.float64] | None = None

    def append_entries(self, new: dict[str, NDArray[Any]], texts: list[str]) -> None:
        """New entries, all active: a value per array for each."""
        arrays = self.state.arrays
        if np.any(new["deleted"]):
            raise ValueError("appended entries must be active")
        before = arrays["deleted"]
        for name, dtype in ARRAYS.items():
            arrays[name] = columns.extend(arrays[name], np.asarray(new[name], dtype=dtype))
        self._appended_active(before, len(texts))
        if self.live is not None:
            self.live = columns.extend(self.live, arrays["score"][len(before) :])
        self.texts.extend(texts)

    def append_entry(self, values: tuple[Any, ...], text: str) -> None:
        """One active entry: a value per array, in ARRAYS order."""
        if values[_DELETED]:
            raise ValueError("appended entries must be active")
        arrays = self.state.arrays
        before = arrays["deleted"]
        for name, value in zip(ARRAYS, values, strict=True):
            arrays[name] = columns.extend_one(arrays[name], value)
        self._appended_active(before, 1)
        if self.live is not None:
            self.live = columns.extend_one(self.live, values[_SCORE])
        self.texts.append(text)

    def _appended_active(self, deleted_before: NDArray[Any], count: int) -> None:
        """Counts the new entries and carries the active-index memo over to the grown deletion array (every step
        appends a token: recomputing the index from the flags each time cost a pass over the whole dictionary)."""
        state = self.state
        self.appended += count
        memo = state._active
        if memo is not None and memo[0] is deleted_before:
            grown = columns.extend(memo[1], np.arange(len(deleted_before), len(deleted_before) + count, dtype=np.intp))
            state._active = (state.arrays["deleted"], grown)

    def set_array(self, name: str, values: NDArray[Any], live: NDArray[np.float64] | None = None) -> None:
        """`values` replaces the array; for `score`, `live` may give the new scores of the active entries."""
        self.state.arrays[name] = np.asarray(values, dtype=ARRAYS[name])
        self.rewritten.add(name)
        self.patched.pop(name, None)
        if name == "score":
            self.live = live
        elif name == "deleted":  # another active set: the store gathers the live scores again
            self.live = None

    def patch_array(self, name: str, values: NDArray[Any], ranges: list[tuple[int, int]]) -> None:
        """`values` replaces the array; only the entries in `ranges` ((first, count) of existing entries) differ."""
        self.state.arrays[name] = np.asarray(values, dtype=ARRAYS[name])
        if name in ("score", "deleted"):
            self.live = None
        if name not in self.rewritten:
            self.patched.setdefault(name, []).extend(ranges)

    def set_settings(self, settings: Settings) -> None:
        self.state.settings = settings
        self.state.meta.settings_version += 1
        self.settings_changed = True

    def emit(self, event_type: str, data: dict[str, Any]) -> None:
        self.events.append((event_type, data))
