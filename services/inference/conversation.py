"""One reply being generated on a worker: everything the step loop knows about one conversation, in one object.

A conversation holds its job's names, its own KV cache (own RoPE positions, gaps and evictions), its peer (the
tracker's Generate stream), its sampling settings and capture mode, and `pending`: the tokens to feed next at their
positions. After Open, pending is the part of the context the cache lacks (or the whole context, when only a rebuild
can make the cache match); the scheduler feeds it in chunks. Whenever the last pending token has been fed, the forward
gives this conversation's logits and attention row (after the prompt, with recall on, first a recall probe:
services/inference/recall.py): it samples a token, sends the Frame, and the Directive that
answers says where that token goes (pending becomes that one token) and what to evict or rebuild first.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from haloweave.tracker.v1 import tracker_pb2

from services.common import session_settings, settings_wire
from services.common.errors import FailedPrecondition, HaloWeaveError, InvalidArgument
from services.inference.engine import (
    BatchEntry,
    Engine,
    Sampler,
    SamplingParams,
    SessionCache,
    StepOutput,
    stop_reached,
)
from services.inference.engine_thread import EngineThread
from services.inference.recall import Recall
from services.inference.reply import Peer
from services.inference.scheduler import Limits

# The settings the sampler takes, and those of them that make a new generator (from the schema's Generation group).
SAMPLING_FIELDS = session_settings.sampling_fields()
RESEEDING_FIELDS = tuple(name for name in SAMPLING_FIELDS if name not in ("max_new_tokens", "stop"))


@dataclass(slots=True)
class ReplyStats:
    """What one reply measured, for the Finish message and the worker's metrics."""

    reason: str = ""
    tokens: int = 0
    prefill_tokens: int = 0
    rebuilt: bool = False
    time_to_first_token_s: float = 0.0
    inter_token_s: list[float] = field(default_factory=list)
    started: float = field(default_factory=time.perf_counter)
    last_token_at: float = 0.0

    @property
    def tokens_per_s(self) -> float:
        elapsed = time.perf_counter() - self.started
        return self.tokens / elapsed if elapsed > 0 else 0.0

    def token(self) -> None:
        now = time.perf_counter()
        if self.tokens == 0:
            self.time_to_first_token_s = now - self.started
        else:
            self.inter_token_s.append(now - self.last_token_at)
        self.last_token_at = now
        self.tokens += 1


def sampling_params(settings: tracker_pb2.Settings, base: SamplingParams | None = None) -> SamplingParams:
    """The generation settings as SamplingParams; fields not set keep `base`'s (or the defaults)."""
    return _sampling_params(settings_wire.from_pb(settings), base)


def _sampling_params(changes: dict[str, Any], base: SamplingParams | None) -> SamplingParams:
    values: dict[str, Any] = {}
    if base is not None:
        values = {name: getattr(base, name) for name in SAMPLING_FIELDS}
    values.update({name: changes[name] for name in SAMPLING_FIELDS if name in changes})
    if "stop" in values:
        values["stop"] = list(values["stop"])
    try:
        return SamplingParams(**values)
    except (TypeError, ValueError) as error:
        raise InvalidArgument(f"invalid generation settings: {error}") from None


class Conversation:
    def __init__(
        self,
        engine: Engine,
        cache: SessionCache,
        peer: Peer,
        session_id: str,
        job_id: str,
        cold_budget_bytes: int = Limits().cold_budget_bytes,
    ) -> None:
        self.engine = engine
        self.cache = cache
        self.peer = peer
        self.session_id = session_id
        self.job_id = job_id
        self.stats = ReplyStats()
        self.params = SamplingParams()
        self.sampler = Sampler(self.params)
        self.mode: str = session_settings.SessionSettings().aggregation
        self.recall = Recall(engine, cold_budget_bytes)
        self.pending_ids: list[int] = []
        self.pending_positions: list[int] = []
        self.context_pending = 0  # how many of the pending tokens are context (prefill), not a sampled token
        self.last_prefill = 0  # context tokens in the last chunk scheduled: the prefill share of a step
        self.step = 0  # the Frame step of the next sampled token
        self.token = -1  # the token sampled at the last step, until a Directive places it
        self.text_ids: list[int] = []
        self.reported = False  # a Fail reached the tracker, which tells the client itself
        self.failing = False  # taken out of the batch; the tracker is being told
        self.resuming = False  # taken out of the batch while its stream is reopened (`batcher`)
        # Whether this worker still holds the job: a reply is reopened only then (another worker may have taken the
        # job over while this one was thought dead). The worker asks Redis; tests without one always hold it.
        self.holds_job: Callable[[], Awaitable[bool]] = _always
        self.done: asyncio.Future[ReplyStats] = asyncio.get_running_loop().create_future()

    def __repr__(self) -> str:
        return f"Conversation({self.session_id}, job {self.job_id}, step {self.step}, {len(self.cache)} cached)"

    # ---- opening: what the cache must be fed before the first token ------------------------------------------------

    async def open(self, thread: EngineThread) -> None:
        """Opens the reply with the tracker, or reopens it after a fault: then it continues from the step the tracker
        committed last, whatever this worker had computed beyond it (nothing the client saw is beyond it)."""
        opened = await self.peer.open()
        self._settings(opened.settings, first=True)
        pruned = opened.pruned
        self.recall.opened(self.cache, list(pruned.positions), list(pruned.token_ids), list(opened.probe_positions))
        context = opened.context
        if not context.positions:
            raise FailedPrecondition("tracker sent an empty context")
        positions, token_ids = list(context.positions), list(context.token_ids)
        self._resume_at(opened.resumed_step, token_ids)
        plan = self.cache.sync_plan(positions, token_ids)
        if plan is not None and not plan[1] and len(self.cache) > 1:
            # The cache holds the whole context, but the next token needs the last one's logits: it is fed again.
            plan = ([*plan[0], positions[-1]], positions[-1:], token_ids[-1:])
        if plan is not None and plan[1]:
            evict, suffix_positions, suffix_ids = plan
            await thread.run(self.engine.evict, self.cache, evict, self.recall.enabled)
            self._feed(suffix_ids, suffix_positions)
        else:
            # The cache cannot be brought there by evictions and a suffix (or holds all of it, and the last token's
            # logits are needed): rebuild it from the whole context.
            self.stats.rebuilt = True
            self.cache.clear()
            self._feed(token_ids, positions)
        self.stats.prefill_tokens = len(self.pending_ids)

    def _resume_at(self, step: int, token_ids: list[int]) -> None:
        """The reply's next step and its text so far (the context's last `step` entries: a reply's own tokens are
        never pruned), for stop strings and max_new_tokens; 0 for a new reply."""
        if step > len(token_ids):
            raise FailedPrecondition(f"tracker resumed the reply at step {step} with {len(token_ids)} tokens")
        self.step = step
        self.text_ids = token_ids[len(token_ids) - step :] if step else []
        self.stats.reason = ""

    def _feed(self, token_ids: list[int], positions: list[int]) -> None:
        """Context tokens to (re)fill the cache with, before any sampled token."""
        self.pending_ids, self.pending_positions = token_ids, positions
        self.context_pending = len(token_ids)

    def refeed(self, token_ids: list[int], positions: list[int]) -> None:
        """After recall: the prompt's last token (or, when re-insertion failed, the whole context) is fed again."""
        self._feed(token_ids, positions)

    # ---- what the scheduler asks ---------------------------------------------------------------------------------

    @property
    def pending(self) -> int:
        return len(self.pending_ids)

    def kv_bytes_needed(self) -> int:
        """The KV bytes this reply holds at most: what is cached, what is pending and every token it may sample."""
        tokens = len(self.cache) + self.pending + self.params.max_new_tokens
        return tokens * self.engine.kv_bytes_per_token

    def next_entry(self, budget: int) -> BatchEntry:
        """The next chunk of pending tokens (at most `budget`); the last chunk asks for logits and the row."""
        n = min(budget, self.pending)
        ids, positions = self.pending_ids[:n], self.pending_positions[:n]
        del self.pending_ids[:n], self.pending_positions[:n]
        self.last_prefill = min(n, self.context_pending)
        self.context_pending -= self.last_prefill
        last = not self.pending_ids
        probe = self.recall.probe(self.cache, positions) if last and self.step == 0 else ()
        return BatchEntry(
            self.cache,
            ids,
            positions,
            capture=self.mode if last else None,
            logits=last,
            probe=probe,
            sampling=self.params,
        )

    # ---- one step's postprocessing -----------------------------------------------------------------------------------

    def sample(self, out: StepOutput) -> tracker_pb2.Frame:
        """Samples this step's token from the forward's output; returns the Frame that reports it."""
        if out.token is not None:  # an engine that samples in its own step (vLLM) chose it already
            self.token = out.token
        else:
            assert out.logits is not None
            self.token = self.sampler.sample(out.logits, self.step)
        self.stats.token()
        frame = tracker_pb2.Frame(step=self.step, token_id=self.token, worker_seconds=out.seconds)
        if out.full is not None:
            # `full` mode ships the [layers, heads, ctx] fp16 tensor alone (the tracker reduces it).
            layers, heads, _ = out.full.shape
            frame.full_attention = out.full.astype("<f2", copy=False).tobytes()
            frame.layers = layers
            frame.heads = heads
        elif out.attention is not None:
            frame.attention.extend(out.attention.tolist())
        return frame

    def settle(self, directive: tracker_pb2.Directive) -> str:
        """Takes the Directive's settings and decides whether the reply ends here; the finish reason or ''."""
        if directive.HasField("settings"):
            self._settings(directive.settings)
        self.text_ids.append(self.token)
        reason = self._finished(directive)
        self.step += 1
        self.stats.reason = reason
        return reason

    def apply(self, directive: tracker_pb2.Directive, finished: bool) -> None:
        """Evicts in place, or sets up the rebuild from the survivors; then (unless finished) the sampled token is
        the next to feed, at the position the Directive gave it. Runs off the event loop (it may move KV slots)."""
        if directive.reprefill:
            self.stats.rebuilt = True
            context = directive.context
            pairs = [
                (p, t) for p, t in zip(context.positions, context.token_ids, strict=True) if p < directive.position
            ]
            if self.recall.enabled:  # what the rebuild leaves out is pruned: it goes cold first
                kept = {p for p, _ in pairs}
                self.engine.evict(self.cache, [p for p in self.cache.positions if p not in kept], cold=True)
            self.cache.clear()  # rebuilt in chunks, like a prompt, while the other conversations keep decoding
            self._feed([t for _, t in pairs], [p for p, _ in pairs])
        elif directive.evict_positions:
            try:
                self.engine.evict(self.cache, list(directive.evict_positions), cold=self.recall.enabled)
            except ValueError as error:
                raise InvalidArgument(f"prune directive: {error}") from None
        if finished:
            # A finished reply keeps only what it has; a rebuild pending at the end is left to the next turn's sync.
            self._feed([], [])
            return
        self.pending_ids.append(self.token)
        self.pending_positions.append(int(directive.position))

    def ended_before(self) -> str:
        """After a reopen: why the committed reply has already ended (its last token was EOS, or a stop string or
        max_new_tokens was reached before the stream broke), or '' when it goes on."""
        return self._ended(self.step) if self.text_ids else ""

    def finish_message(self) -> tracker_pb2.Finish:
        return tracker_pb2.Finish(
            reason=self.stats.reason,
            tokens=self.step,  # the reply's tokens, a resumed one's earlier attempts' included
            time_to_first_token_s=self.stats.time_to_first_token_s,
            tokens_per_s=self.stats.tokens_per_s,
        )

    def _settings(self, settings: tracker_pb2.Settings, first: bool = False) -> None:
        """Settings from the tracker (all of them on Open, the changed ones on a Directive), checked by the schema."""
        changes = settings_wire.from_pb(settings)
        self.params = _sampling_params(changes, None if first else self.params)
        if first or any(name in changes for name in RESEEDING_FIELDS):
            self.sampler = Sampler(self.params)  # a new seed or temperature applies from the next token
        if "aggregation" in changes:
            self.mode = changes["aggregation"]
        if "recall" in changes:
            self.recall.enabled = changes["recall"]

    def _finished(self, directive: tracker_pb2.Directive) -> str:
        return "cancelled" if directive.cancel else self._ended(self.step + 1)

    def _ended(self, tokens: int) -> str:
        """Why a reply of `tokens` tokens whose text so far is `text_ids` ends here, or ''."""
        if self.text_ids[-1] in self.engine.eos_token_ids:
            return "eos"
        if self.params.stop:
            text = str(self.engine.tokenizer.decode(self.text_ids, skip_special_tokens=True))
            if stop_reached(text, self.params.stop) is not None:
                return "stop"
        return "length" if tokens >= self.params.max_new_tokens else ""

    def fail_with(self, error: HaloWeaveError) -> None:
        if not self.done.done():
            self.done.set_exception(error)

    def succeed(self) -> None:
        if not self.done.done():
            self.done.set_result(self.stats)


async def _always() -> bool:
    return True
