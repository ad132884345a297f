"""One reply: the worker's side of the tracker's Generate stream (protos/haloweave/tracker/v1/tracker.proto).

Open → Opened (settings + active context) → sync the session's KV cache with the context → per step a Frame (the
sampled token and its attention row) answered by a Directive (the token's position, evictions or a reprefill, new
settings, cancel) → Finish or Fail → Closed.

Step 0's token is sampled from the prefill's logits, with the prefill's last-row attention; each later step feeds
the previous token at the position the Directive gave it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from haloweave.tracker.v1 import tracker_pb2

from services.common.errors import FailedPrecondition, HaloWeaveError, InvalidArgument
from services.inference.clients import GenerateStream, TrackerClient
from services.inference.engine import Engine, Sampler, SamplingParams, SessionCache, StepOutput, stop_reached

log = logging.getLogger(__name__)

SAMPLING_FIELDS = ("max_new_tokens", "temperature", "top_p", "seed")


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

    @property
    def tokens_per_s(self) -> float:
        elapsed = time.perf_counter() - self.started
        return self.tokens / elapsed if elapsed > 0 else 0.0


def sampling_params(settings: tracker_pb2.Settings, base: SamplingParams | None = None) -> SamplingParams:
    """The generation settings as SamplingParams; fields not set keep `base`'s (or the defaults). ValueError if bad."""
    values: dict[str, Any] = {}
    if base is not None:
        values = {name: getattr(base, name) for name in (*SAMPLING_FIELDS, "stop")}
    for name in SAMPLING_FIELDS:
        if settings.HasField(name):  # type: ignore[arg-type]
            values[name] = getattr(settings, name)
    if settings.clear_stop:
        values["stop"] = []
    if settings.stop:
        values["stop"] = list(settings.stop)
    try:
        return SamplingParams(**values)
    except (TypeError, ValueError) as error:
        raise InvalidArgument(f"invalid generation settings: {error}") from None


def sync_plan(
    cache: SessionCache, positions: list[int], token_ids: list[int]
) -> tuple[list[int], list[int], list[int]] | None:
    """How to make the cache hold exactly the context: (positions to evict, suffix positions, suffix ids), or None
    when only a rebuild can (the kept entries are not a prefix of the context, or a token differs)."""
    wanted = set(positions)
    evict = [p for p in cache.positions if p not in wanted]
    gone = set(evict)
    kept = [(p, t) for p, t in zip(cache.positions, cache.token_ids, strict=True) if p not in gone]
    if len(kept) > len(positions):
        return None
    for (p, t), (q, u) in zip(kept, zip(positions, token_ids, strict=True), strict=False):
        if p != q or t != u:
            return None
    return evict, positions[len(kept) :], token_ids[len(kept) :]


class Reply:
    """Drives one generate job to its end; raises HaloWeaveError for a failure the client should hear about."""

    def __init__(self, engine: Engine, tracker: TrackerClient, session_id: str, job_id: str) -> None:
        self.engine = engine
        self.tracker = tracker
        self.session_id = session_id
        self.job_id = job_id
        self.stats = ReplyStats()
        self.turn_id = 0
        self.reported = False  # a Fail reached the tracker, which tells the client itself
        self._last_token_at = 0.0

    async def run(self, cache: SessionCache) -> ReplyStats:
        stream = self.tracker.generate()
        try:
            await stream.send(
                tracker_pb2.GenerateRequest(open=tracker_pb2.Open(session_id=self.session_id, job_id=self.job_id))
            )
            first = await stream.recv()
            if not first.HasField("opened"):
                raise FailedPrecondition(f"tracker answered Open with {first.WhichOneof('kind')}")
            self.turn_id = first.opened.turn_id
            try:
                await self._generate(stream, cache, first.opened)
            except HaloWeaveError as error:
                # The stream is open: the tracker turns Fail into the client's error event. If the tracker itself
                # ended the stream, it told nobody; the worker then reports the error on completion.
                try:
                    fail = tracker_pb2.Fail(code=error.code, message=error.message)
                    await stream.send(tracker_pb2.GenerateRequest(fail=fail))
                    await self._closed(stream)
                    self.reported = True
                except HaloWeaveError:
                    log.info("job %s: the tracker's stream is gone; the worker reports %s", self.job_id, error.code)
                raise error from None
            return self.stats
        finally:
            await stream.close()

    async def _closed(self, stream: GenerateStream) -> None:
        reply = await stream.recv()
        if not reply.HasField("closed"):
            raise FailedPrecondition(f"tracker answered Finish with {reply.WhichOneof('kind')}, not Closed")

    async def _generate(self, stream: GenerateStream, cache: SessionCache, opened: tracker_pb2.Opened) -> None:
        settings = opened.settings
        params = sampling_params(settings)
        mode = settings.aggregation if settings.HasField("aggregation") else "mean"
        sampler = Sampler(params)
        context = opened.context
        out = await self._sync(cache, list(context.positions), list(context.token_ids), mode)
        text_ids: list[int] = []
        step = 0
        while True:
            token = sampler.sample(out.logits)
            now = time.perf_counter()
            if step == 0:
                self.stats.time_to_first_token_s = now - self.stats.started
            else:
                self.stats.inter_token_s.append(now - self._last_token_at)
            self._last_token_at = now
            self.stats.tokens += 1
            await stream.send(tracker_pb2.GenerateRequest(frame=self._frame(step, token, out)))
            reply = await stream.recv()
            if not reply.HasField("directive"):
                raise FailedPrecondition(f"tracker answered a Frame with {reply.WhichOneof('kind')}")
            directive = reply.directive
            if directive.HasField("settings"):
                changed = directive.settings
                params = sampling_params(changed, params)
                if any(changed.HasField(name) for name in ("temperature", "top_p", "seed")):
                    sampler = Sampler(params)  # a new seed or temperature applies from the next token
                if directive.settings.HasField("aggregation"):
                    mode = directive.settings.aggregation
            text_ids.append(token)
            reason = self._finished(directive, token, text_ids, params, step)
            if reason:
                self.stats.reason = reason
                finish = tracker_pb2.Finish(
                    reason=reason,
                    tokens=self.stats.tokens,
                    time_to_first_token_s=self.stats.time_to_first_token_s,
                    tokens_per_s=self.stats.tokens_per_s,
                )
                await stream.send(tracker_pb2.GenerateRequest(finish=finish))
                await self._closed(stream)
                # The last step may have pruned too: the held cache should match the dictionary (and its size the
                # budget) now, not only at the next turn's sync. Done after Closed so `done` is not delayed.
                await self._apply(cache, directive)
                return
            await self._apply(cache, directive)
            out = await self._run(self.engine.decode, cache, token, int(directive.position), mode)
            step += 1

    def _finished(
        self, directive: tracker_pb2.Directive, token: int, text_ids: list[int], params: SamplingParams, step: int
    ) -> str:
        if directive.cancel:
            return "cancelled"
        if token in self.engine.eos_token_ids:
            return "eos"
        if params.stop:
            text = str(self.engine.tokenizer.decode(text_ids, skip_special_tokens=True))
            if stop_reached(text, params.stop) is not None:
                return "stop"
        if step + 1 >= params.max_new_tokens:
            return "length"
        return ""

    async def _apply(self, cache: SessionCache, directive: tracker_pb2.Directive) -> None:
        """Evicts in place, or rebuilds from the surviving tokens; the sampled token is fed afterwards."""
        log.debug(
            "directive step %d position %d evict %s reprefill %s (%d in context)",
            directive.step,
            directive.position,
            list(directive.evict_positions),
            directive.reprefill,
            len(directive.context.positions),
        )
        if directive.reprefill:
            ctx = directive.context
            pairs = [(p, t) for p, t in zip(ctx.positions, ctx.token_ids, strict=True) if p < directive.position]
            await self._run_plain(self.engine.rebuild, cache, [t for _, t in pairs], [p for p, _ in pairs])
            self.stats.rebuilt = True
        elif directive.evict_positions:
            try:
                await self._run_plain(self.engine.evict, cache, list(directive.evict_positions))
            except ValueError as error:
                raise InvalidArgument(f"prune directive: {error}") from None

    async def _sync(self, cache: SessionCache, positions: list[int], token_ids: list[int], mode: str) -> StepOutput:
        """Brings the cache to exactly the active context and returns the forward of its last token."""
        if not positions:
            raise FailedPrecondition("tracker sent an empty context")
        plan = sync_plan(cache, positions, token_ids)
        if plan is not None:
            evict, suffix_positions, suffix_ids = plan
            if suffix_positions:
                await self._run_plain(self.engine.evict, cache, evict)
                self.stats.prefill_tokens = len(suffix_ids)
                return await self._run(self.engine.prefill, cache, suffix_ids, suffix_positions, mode)
        # The cache cannot be brought there by evictions and a suffix: rebuild all but the last token, then feed it.
        self.stats.rebuilt = True
        await self._run_plain(self.engine.rebuild, cache, token_ids[:-1], positions[:-1])
        self.stats.prefill_tokens = len(token_ids)
        return await self._run(self.engine.prefill, cache, token_ids[-1:], positions[-1:], mode)

    def _frame(self, step: int, token: int, out: StepOutput) -> tracker_pb2.Frame:
        """`full` mode ships the [layers, heads, ctx] fp16 tensor alone (the tracker reduces it); any other mode the
        vector aggregated here."""
        frame = tracker_pb2.Frame(step=step, token_id=token, worker_seconds=out.seconds)
        if out.full is not None:
            layers, heads, _ = out.full.shape
            frame.full_attention = out.full.astype("<f2", copy=False).tobytes()
            frame.layers = layers
            frame.heads = heads
        elif out.attention is not None:
            frame.attention.extend(out.attention.tolist())
        return frame

    async def _run(self, fn: Any, *args: Any) -> StepOutput:
        # The forward runs in a thread so that the worker's heartbeats and metrics keep going meanwhile.
        try:
            result: StepOutput = await asyncio.to_thread(fn, *args)
        except ValueError as error:
            raise InvalidArgument(str(error)) from None
        return result

    async def _run_plain(self, fn: Any, *args: Any) -> None:
        await asyncio.to_thread(fn, *args)
