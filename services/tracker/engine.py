"""The tracker's operations on sessions: the domain API the servicer calls (no grpc here).

Each operation is a pure function of (state, inputs) applied to a Draft and written by one atomic commit. The state
comes from a small in-process cache keyed by the stored version; when another replica changed the session in between,
the commit reports a conflict and the operation runs again on freshly loaded state. So replicas are stateless in the
sense that matters: Redis is the only truth, and any replica may serve any call.
"""

from __future__ import annotations

import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
from numpy.typing import NDArray

from services.common.errors import (
    Aborted,
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unavailable,
)
from services.tracker import dictionary, restore
from services.tracker.frames import FrameInput, reduce_frame
from services.tracker.restore import ExportedToken
from services.tracker.settings import Settings
from services.tracker.state import DONE_JOBS_KEPT, ROLE_CODES, ROLE_NAMES, Draft, Meta, SessionState
from services.tracker.store import Store
from services.tracker.template import ChatTemplate

T = TypeVar("T")
MAX_ATTEMPTS = 8
CACHE_SESSIONS = 256
MAX_MESSAGE_CHARS = 1_000_000
# An open reply whose stream has not spoken for this long counts as abandoned even if no stream end was recorded (the
# tracker replica that held it was killed). Longer than a worker keeps reopening a broken stream (60 s), so a reply
# that is still being continued is never taken for abandoned.
SILENT_REPLY_S = 90.0


@dataclass(frozen=True, slots=True)
class ContextView:
    positions: list[int]
    token_ids: list[int]
    next_position: int


@dataclass(frozen=True, slots=True)
class Opened:
    turn_id: int
    settings: Settings
    settings_version: int
    context: ContextView
    pruned_tokens: int
    pruned_sentences: int
    pruned: ContextView | None = None  # recall on: the deleted tokens
    probe_positions: list[int] | None = None  # recall on: the latest user message's text
    resumed_step: int = 0  # a resumed reply: its tokens committed so far (the context's last entries)
    attempt: int = 0  # this stream's attempt: the messages that follow must carry it


@dataclass(frozen=True, slots=True)
class RecallProbe:
    cold_positions: NDArray[np.int64]
    cold_scores: NDArray[np.float64]
    active_scores: NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class RecallOutcome:
    positions: list[int]
    token_ids: list[int]
    evict_positions: list[int]
    sentences: int
    pruned_tokens: int
    pruned_sentences: int
    refused: str = ""  # why the probe changed nothing, when it was not usable


@dataclass(frozen=True, slots=True)
class StepOutcome:
    step: int
    position: int
    evict_positions: list[int]
    reprefill: bool
    context: ContextView | None
    settings: Settings
    settings_version: int
    cancel: bool
    active_tokens: int
    pruned_tokens: int
    pruned_sentences: int
    aggregation_seconds: float


def context_of(state: SessionState) -> ContextView:
    active = state.active_index()
    return ContextView(
        state.arrays["pos"][active].tolist(), state.arrays["tid"][active].tolist(), state.meta.next_position
    )


def pruned_of(state: SessionState) -> ContextView:
    gone = np.flatnonzero(state.arrays["deleted"])
    return ContextView(state.arrays["pos"][gone].tolist(), state.arrays["tid"][gone].tolist(), state.meta.next_position)


class Engine:
    def __init__(self, store: Store, template: ChatTemplate, model: str, fingerprint: str) -> None:
        self.store = store
        self.template = template
        self.vocab_size = len(template.tokenizer)
        self.model = model
        self.fingerprint = fingerprint
        self._cache: OrderedDict[str, SessionState] = OrderedDict()
        # Tokens of a user message's template header and trailer, left out of recall's probe (counted once).
        self._user_marks = (
            len(template.tokenise(template.prefixes["user"]).token_ids),
            len(template.tokenise(template.suffixes["user"]).token_ids),
        )

    # ---- plumbing -------------------------------------------------------------------------------------------------

    async def _state(self, session_id: str, fresh: bool) -> SessionState:
        cached = None if fresh else self._cache.get(session_id)
        if cached is not None:
            self._cache.move_to_end(session_id)
            return cached
        try:
            state = await self.store.load(session_id)
        except NotFound:
            self._cache.pop(session_id, None)  # erased (by another replica, say): its stale copy goes too
            raise
        self._remember(state)
        return state

    def _remember(self, state: SessionState) -> None:
        self._cache[state.session_id] = state
        self._cache.move_to_end(state.session_id)
        while len(self._cache) > CACHE_SESSIONS:
            self._cache.popitem(last=False)

    async def _run(
        self, session_id: str, change: Callable[[Draft], T], replace: bool = False
    ) -> tuple[T, SessionState]:
        """Applies `change` and commits it; recomputes on fresh state after a conflict or a cache-based refusal."""
        fresh = False
        for _ in range(MAX_ATTEMPTS):
            state = await self._state(session_id, fresh)
            draft = state.draft()
            try:
                result = change(draft)
            except Exception:
                if fresh:
                    raise
                fresh = True  # the refusal may come from a stale cache: decide again on what Redis holds
                continue
            unchanged = not (draft.events or draft.appended or draft.rewritten or draft.patched)
            if unchanged and draft.state.meta == state.meta:
                return result, state  # nothing to write (a read, or a no-op)
            if await self.store.commit(draft, replace=replace) is not None:
                self._remember(draft.state)
                return result, draft.state
            fresh = True
        raise Unavailable(f"session {session_id!r} is changing too fast; try again")

    async def session(self, session_id: str) -> SessionState:
        return await self._state(session_id, fresh=True)

    async def delete_session(self, session_id: str) -> tuple[int, bool]:
        """Erases the session: its Redis keys and this replica's cached state. Returns (keys removed, was cached).

        A step of another replica (or of a stream still open here) that commits afterwards finds no stored version
        to match, so it is refused (CONFLICT), reloads and meets NotFound: nothing of the session is written again."""
        cached = self._cache.pop(session_id, None) is not None
        removed = await self.store.delete(session_id)
        self._cache.pop(session_id, None)  # a read that raced the erase may have cached it again
        return removed, cached

    # ---- sessions and messages ------------------------------------------------------------------------------------

    async def create_session(self, changes: dict[str, Any], system_prompt: str | None) -> SessionState:
        settings = Settings().updated(changes)
        prompt = self.template.default_system_prompt if system_prompt is None else system_prompt
        _check_text(prompt, "system_prompt", allow_empty=True)
        state = SessionState(uuid.uuid4().hex, Meta(model=self.model, fingerprint=self.fingerprint), settings)
        draft = state.draft()
        self._append_message(draft, "system", prompt)
        _check_budget(draft, settings.max_context_tokens)
        draft.emit("settings", {"settings": settings.to_dict()})
        if await self.store.commit(draft) is None:
            raise Unavailable("session id collision; try again")
        self._remember(draft.state)
        return draft.state

    async def append_message(self, session_id: str, role: str, text: str) -> tuple[int, int, int]:
        # An assistant message is a reply given elsewhere (a conversation sent whole, as OpenAI clients do): it is
        # rendered by the template like a generated one, but nothing generates after it until a user message comes.
        if role not in ("user", "system", "assistant"):
            raise InvalidArgument(f"role must be user, system or assistant, got {role!r}")
        _check_text(text, "text")
        tokenised = self.template.tokenise(self.template.render(role, text))

        def change(draft: Draft) -> tuple[int, int, int]:
            meta = draft.state.meta
            if meta.gen_turn >= 0:
                if not _abandoned(meta):
                    raise FailedPrecondition(f"session {session_id!r} is generating a reply; wait for it to finish")
                self._abandon(draft)
            first = meta.next_position
            turn = self._append_tokens(draft, role, tokenised.token_ids, tokenised.pieces)
            return turn, first, meta.next_position - 1

        result, _ = await self._run(session_id, change)
        return result

    def _append_message(self, draft: Draft, role: str, text: str) -> int:
        tokenised = self.template.tokenise(self.template.render(role, text))
        return self._append_tokens(draft, role, tokenised.token_ids, tokenised.pieces)

    def _append_tokens(self, draft: Draft, role: str, ids: list[int], pieces: list[str]) -> int:
        meta = draft.state.meta
        turn = meta.turns
        meta.turns += 1
        if role == "user":
            meta.last_user_turn = turn
        dictionary.append_tokens(draft, role, turn, ids, pieces, continues=False)
        return turn

    async def context(self, session_id: str) -> ContextView:
        return context_of(await self.session(session_id))

    # ---- settings and cancel --------------------------------------------------------------------------------------

    async def update_settings(self, session_id: str, changes: dict[str, Any]) -> Settings:
        def change(draft: Draft) -> Settings:
            updated = draft.state.settings.updated(changes)
            if updated.max_context_tokens != draft.state.settings.max_context_tokens:
                _check_budget(draft, updated.max_context_tokens)
            if updated != draft.state.settings:
                draft.set_settings(updated)
                draft.emit("settings", {"settings": updated.to_dict()})
            return updated

        result, _ = await self._run(session_id, change)
        return result

    async def cancel(self, session_id: str) -> None:
        def change(draft: Draft) -> None:
            if draft.state.meta.gen_turn >= 0:
                draft.state.meta.cancel = 1

        await self._run(session_id, change)

    # ---- generation -----------------------------------------------------------------------------------------------

    async def open(self, session_id: str, job_id: str) -> Opened:
        header = self.template.tokenise(self.template.generation_header)

        def change(draft: Draft) -> Opened:
            meta = draft.state.meta
            if job_id in meta.done_jobs.split(","):
                # Its worker died after the reply ended but before marking the job done: the reply exists already.
                raise AlreadyExists(f"job {job_id!r} of session {session_id!r} has already finished")
            if meta.gen_turn >= 0 and meta.job_id == job_id:
                # The same job again (its worker died, or its stream broke): the reply continues from what is
                # committed, as the same turn; the earlier stream is fenced off by the new attempt.
                meta.orphaned, meta.attempt, meta.touched = 0, meta.attempt + 1, time.time()
                return self._opened(draft, meta.gen_turn, resumed_step=meta.step)
            if meta.gen_turn >= 0:
                # Another job's reply was left open (a job superseded by a newer one): it ends before this starts.
                self._abandon(draft)
            turn = self._append_tokens(draft, "assistant", header.token_ids, header.pieces)
            meta.gen_turn, meta.job_id, meta.step, meta.cancel, meta.orphaned = turn, job_id, 0, 0, 0
            meta.attempt = 1
            meta.gen_started = meta.touched = time.time()
            return self._opened(draft, turn)

        result, _ = await self._run(session_id, change)
        return result

    def _opened(self, draft: Draft, turn: int, resumed_step: int = 0) -> Opened:
        """Prunes to the budget (the header just appended may need room) and describes the context to prefill."""
        meta = draft.state.meta
        pruned = dictionary.prune(draft)
        recall = draft.state.settings.recall
        return Opened(
            turn,
            draft.state.settings,
            meta.settings_version,
            context_of(draft.state),
            len(pruned.positions),
            pruned.sentences,
            pruned_of(draft.state) if recall else None,
            self._message_text(draft.state, meta.last_user_turn) if recall else None,
            resumed_step,
            meta.attempt,
        )

    def _abandon(self, draft: Draft) -> None:
        """Ends an open reply whose job will not continue it; that job, if it ever runs again, finds it done."""
        meta = draft.state.meta
        _remember_done(meta, meta.job_id)
        error = {"code": "aborted", "message": "the reply was abandoned", "job_id": meta.job_id}
        self._close_generation(draft, None, "error", error)

    def _message_text(self, state: SessionState, turn: int) -> list[int]:
        """The positions of a user turn's text: its entries without the template's header and trailer."""
        entries = np.flatnonzero(state.arrays["turn"] == turn)
        head, tail = self._user_marks
        text = entries[head : len(entries) - tail] if len(entries) > head + tail else entries
        return state.arrays["pos"][text].tolist()

    async def recall(
        self, session_id: str, job_id: str, probe: RecallProbe, attempt: int | None = None
    ) -> RecallOutcome:
        """Brings back the pruned sentences the latest user message attends to (services/tracker/recall.py), then
        prunes to the budget by the same probe. A probe that cannot be used changes nothing and says why: a reply
        never fails because of recall."""

        def change(draft: Draft) -> RecallOutcome:
            state, meta = draft.state, draft.state.meta
            self._check_job(meta, session_id, job_id, attempt)
            refused = _probe_problem(state, probe)
            if refused:
                return RecallOutcome([], [], [], 0, 0, 0, refused)
            back = dictionary.bring_back(draft, probe.cold_positions, probe.cold_scores, probe.active_scores)
            pruned = dictionary.prune(draft, back.ranking) if back.positions else dictionary.Pruned([], 0)
            note = f"{back.ignored} probed positions are not pruned entries" if back.ignored else ""
            return RecallOutcome(
                back.positions,
                back.token_ids,
                pruned.positions,
                back.sentences,
                len(pruned.positions),
                pruned.sentences,
                note,
            )

        result, _ = await self._run(session_id, change)
        return result

    async def frame(self, session_id: str, job_id: str, frame: FrameInput, attempt: int | None = None) -> StepOutcome:
        def change(draft: Draft) -> StepOutcome:
            state, meta = draft.state, draft.state.meta
            self._check_job(meta, session_id, job_id, attempt)
            if not 0 <= frame.token_id < self.vocab_size:
                raise InvalidArgument(
                    f"frame token_id {frame.token_id} is outside the vocabulary (0..{self.vocab_size - 1})"
                )
            if frame.step != meta.step:
                raise InvalidArgument(f"frame step {frame.step} is out of order: expected step {meta.step}")
            # The current stream speaks: it is alive, whatever an earlier stream's end recorded.
            meta.orphaned, meta.touched = 0, time.time()
            started = time.perf_counter()
            attention, event = reduce_frame(frame, state.arrays["pos"][state.active_index()])
            aggregation_seconds = time.perf_counter() - started
            previous = state.arrays["score"]
            changed = dictionary.score_step(draft, attention)
            if event is not None:
                draft.emit("attention", {"step": frame.step, **event})
            position = meta.next_position
            piece = self.template.pieces([frame.token_id])
            dictionary.append_tokens(draft, "assistant", meta.gen_turn, [frame.token_id], piece, continues=True)
            # The sampled token's event says its step, so a reader tells the reply's text from the template's
            # header and trailer around it (the OpenAI API returns only the text).
            draft.events[-1][1]["step"] = frame.step
            dictionary.brightness(draft, previous, changed, frame.step)
            pruned = dictionary.prune(draft)
            meta.step += 1
            reprefill = bool(pruned.positions) and state.settings.prune_mode == "reprefill"
            return StepOutcome(
                step=frame.step,
                position=position,
                evict_positions=[] if reprefill else pruned.positions,
                reprefill=reprefill,
                context=context_of(state) if reprefill else None,
                settings=state.settings,
                settings_version=meta.settings_version,
                cancel=bool(meta.cancel),
                active_tokens=state.active_count(),
                pruned_tokens=len(pruned.positions),
                pruned_sentences=pruned.sentences,
                aggregation_seconds=aggregation_seconds,
            )

        result, _ = await self._run(session_id, change)
        return result

    async def finish(
        self, session_id: str, job_id: str, reason: str, stats: dict[str, Any], attempt: int | None = None
    ) -> int:
        def change(draft: Draft) -> int:
            self._check_job(draft.state.meta, session_id, job_id, attempt)
            turn = draft.state.meta.gen_turn
            _remember_done(draft.state.meta, job_id)
            self._close_generation(draft, reason, "done", stats)
            return turn

        result, _ = await self._run(session_id, change)
        return result

    async def fail(self, session_id: str, job_id: str, code: str, message: str, attempt: int | None = None) -> int:
        def change(draft: Draft) -> int:
            self._check_job(draft.state.meta, session_id, job_id, attempt)
            turn = draft.state.meta.gen_turn
            error = {"code": code or "internal", "message": message, "job_id": job_id}
            _remember_done(draft.state.meta, job_id)
            self._close_generation(draft, None, "error", error)
            return turn

        result, _ = await self._run(session_id, change)
        return result

    async def orphan(self, session_id: str, job_id: str, attempt: int | None = None) -> None:
        """The stream of this job ended without Finish or Fail: the next message may close the reply, and an Open of
        the same job continues it. A stream that a newer one replaced orphans nothing."""

        def change(draft: Draft) -> None:
            meta = draft.state.meta
            if meta.gen_turn >= 0 and meta.job_id == job_id and attempt in (None, meta.attempt):
                meta.orphaned = 1

        await self._run(session_id, change)

    def _check_job(self, meta: Meta, session_id: str, job_id: str, attempt: int | None) -> None:
        """The stream's job holds the open reply, and (given `attempt`, as the servicer always does) no newer stream
        of the same job has taken it over."""
        if meta.gen_turn < 0 or meta.job_id != job_id:
            raise FailedPrecondition(f"job {job_id!r} holds no open generation of session {session_id!r}")
        if attempt is not None and attempt != meta.attempt:
            raise Aborted(
                f"job {job_id!r} of session {session_id!r}: a newer stream (attempt {meta.attempt}) continues this "
                f"reply; this one (attempt {attempt}) is closed"
            )

    def _close_generation(self, draft: Draft, reason: str | None, event: str, data: dict[str, Any]) -> None:
        state, meta = draft.state, draft.state.meta
        turn = meta.gen_turn
        # While a reply is open nothing else is appended, so after a frame the last entry is the last sampled token.
        last_id = int(state.arrays["tid"][-1]) if meta.step > 0 else None
        trailer = self.template.tokenise(self.template.trailer(last_id))
        dictionary.append_tokens(draft, "assistant", turn, trailer.token_ids, trailer.pieces, continues=True)
        if event == "done":
            stats = dict(data)
            stats.update(
                reason=reason,
                active_tokens=state.active_count(),
                pruned_tokens=meta.pruned_tokens,
            )
            draft.emit("done", {"turn_id": turn, "stats": stats})
        else:
            draft.emit("error", data)
        meta.gen_turn, meta.job_id, meta.step, meta.cancel, meta.orphaned = -1, "", 0, 0, 0
        meta.recalled_keys, meta.attempt = "", 0

    # ---- export and restore ---------------------------------------------------------------------------------------

    async def export(self, session_id: str) -> tuple[SessionState, list[ExportedToken]]:
        state = await self.session(session_id)
        texts = await self.store.texts(session_id)
        a = state.arrays
        tokens = [
            ExportedToken(
                token=texts[i] if i < len(texts) else "",
                token_id=int(a["tid"][i]),
                position=int(a["pos"][i]),
                attention_score=float(a["score"][i]),
                turn_id=int(a["turn"][i]),
                sentence_id=int(a["sent"][i]),
                role=ROLE_NAMES[int(a["role"][i])],
                deleted=bool(a["deleted"][i]),
            )
            for i in range(state.size)
        ]
        return state, tokens

    async def restore(
        self, session_id: str, settings: Settings, tokens: list[ExportedToken], next_position: int
    ) -> None:
        """Replaces the dictionary with an exported one; the position counter never moves backwards."""
        columns, texts = restore.columns(tokens, self.vocab_size)

        def change(draft: Draft) -> None:
            state = draft.state
            if state.generating and not _abandoned(state.meta):
                raise FailedPrecondition(f"session {session_id!r} is generating a reply; restore after it finishes")
            meta = state.meta
            top = int(columns["pos"][-1]) + 1 if len(texts) else 0
            meta.next_position = max(meta.next_position, next_position, top)
            meta.turns = int(columns["turn"].max()) + 1 if len(texts) else 0
            users = columns["turn"][columns["role"] == ROLE_CODES["user"]]
            meta.last_user_turn = int(users.max()) if users.size else -1
            meta.next_gsent = int(columns["gsent"][-1]) + 1 if len(texts) else 0
            meta.gen_turn, meta.job_id, meta.step, meta.cancel, meta.orphaned = -1, "", 0, 0, 0
            meta.recalled_keys, meta.attempt = "", 0
            meta.pruned_tokens = int(columns["deleted"].sum())
            for name, values in columns.items():
                draft.set_array(name, values)
            draft.texts = texts
            draft.set_settings(settings)
            draft.emit("settings", {"settings": settings.to_dict()})

        await self._run(session_id, change, replace=True)


def _abandoned(meta: Meta) -> bool:
    """Whether the open reply can be closed for a new message: its stream ended, or has been silent too long."""
    return bool(meta.orphaned) or time.time() - meta.touched > SILENT_REPLY_S


def _probe_problem(state: SessionState, probe: RecallProbe) -> str:
    """Why a recall probe cannot be used ('' when it can)."""
    if not state.settings.recall:
        return "recall is off"
    if state.meta.step != 0 or state.meta.recalled_keys:
        return "a reply is probed once, before its first frame"
    if len(probe.cold_positions) != len(probe.cold_scores):
        return f"{len(probe.cold_positions)} cold positions but {len(probe.cold_scores)} scores"
    if len(probe.active_scores) != state.active_count():
        return f"{len(probe.active_scores)} active scores for {state.active_count()} active tokens"
    for values in (probe.cold_scores, probe.active_scores):
        if values.size and not (np.all(np.isfinite(values)) and values.min() >= 0):
            return "scores must be finite and non-negative"
    if probe.cold_positions.size > 1 and np.any(np.diff(probe.cold_positions) <= 0):
        return "cold positions must ascend"
    return ""


def _check_text(text: str, name: str, allow_empty: bool = False) -> None:
    if not allow_empty and not text:
        raise InvalidArgument(f"{name} is empty")
    if len(text) > MAX_MESSAGE_CHARS:
        raise InvalidArgument(f"{name} is longer than {MAX_MESSAGE_CHARS} characters")


def _check_budget(draft: Draft, budget: int) -> None:
    """A budget below what can never be pruned could never be met: refused, rather than silently exceeded. (A later
    long user message may still outgrow a budget; pruning then stops at the protected part.)"""
    if budget <= 0:
        return
    protected = int(dictionary.protected_mask(draft, draft.state.active_index()).sum())
    if budget < protected:
        raise InvalidArgument(
            f"settings.max_context_tokens: {budget} is below the {protected} tokens that are never pruned "
            "(the system prompt, the latest user message and the reply being generated)"
        )


def _remember_done(meta: Meta, job_id: str) -> None:
    done = [job for job in meta.done_jobs.split(",") if job]
    meta.done_jobs = ",".join([*done, job_id][-DONE_JOBS_KEPT:])
