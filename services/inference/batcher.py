"""The step loop of one worker: every running conversation advances in one forward per step.

    step = schedule → run → postprocess

- schedule: `Scheduler.schedule()` admits waiting conversations and lays out the step (decodes, then prefill chunks);
- run: one `Engine.forward` over the flat batch, on the engine's thread, so heartbeats and job intake go on;
- postprocess: each conversation whose pending tokens are all fed samples a token; every such conversation's Frame
  goes to the tracker at once and the Directives are awaited together (one conversation's round trip overlaps the
  others', and none waits for another's), then each Directive is applied to its own cache before the next step.

A failure belongs to one conversation: it is told to the tracker (which tells the client) and the batch goes on.
A broken stream is not a failure yet: the tracker restarted, stalled past a message's deadline, or a newer stream of
the same job fenced this one off. The conversation leaves the batch, reopens its stream (with backoff, for up to
`RESUME_DEADLINE_S`) and continues from the step the tracker committed last, as the same reply.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any

from haloweave.tracker.v1 import tracker_pb2

from services.common.errors import Aborted, AlreadyExists, HaloWeaveError, Overloaded, Unavailable
from services.inference import engine_thread
from services.inference.conversation import Conversation, ReplyStats
from services.inference.engine import BatchEntry, Engine, StepOutput
from services.inference.engine_thread import EngineThread
from services.inference.metrics import WorkerStats
from services.inference.scheduler import Limits, Scheduler

log = logging.getLogger(__name__)

IDLE_WAIT_S = 0.5
# Errors after which a reply's stream is reopened rather than the reply failed, and for how long: long enough for a
# tracker (or the Redis under it) to restart or come back from a stall; then the reply fails with a clear error.
RESUMABLE = (Unavailable, Aborted)
RESUME_DEADLINE_S = 60.0
RESUME_BACKOFF_S = (0.25, 2.0)  # first wait, longest wait


class TakenOver(HaloWeaveError):
    """Another worker holds the job now (this one was thought dead): the reply is theirs, this copy stops quietly."""

    code = "aborted"


class Batcher:
    def __init__(
        self,
        engine: Engine,
        limits: Limits,
        stats: WorkerStats | None = None,
        on_load: Callable[[int], None] | None = None,
        thread: EngineThread | None = None,
    ) -> None:
        self.engine = engine
        self.thread = thread or engine_thread.shared()
        self.scheduler = Scheduler(limits)
        self.stats = stats
        self._on_load = on_load or (lambda load: None)
        self._wake = asyncio.Event()
        self._reporting: set[asyncio.Task[None]] = set()
        self._opening = 0  # replies being opened with the tracker: they count against the bound already

    @property
    def load(self) -> int:
        """Replies this worker has taken on and not finished: what routing balances between workers."""
        return len(self.scheduler) + self._opening

    async def generate(self, conversation: Conversation) -> ReplyStats:
        """Opens the reply, queues it and returns its stats once it has ended; raises the HaloWeaveError it failed
        with (`conversation.reported` says whether the tracker already told the client)."""
        limits = self.scheduler.limits
        if self.load >= limits.max_running + limits.max_waiting:
            raise Overloaded(
                f"the worker is full ({limits.max_running} replies running, {limits.max_waiting} waiting); "
                "try again shortly"
            )
        self._opening += 1
        try:
            await self._open(conversation, first=True)
        except BaseException:
            await conversation.peer.close()
            raise
        finally:
            self._opening -= 1
        if conversation.ended_before():  # a reopened job whose reply the tracker holds whole: it only needs Finish
            await self._finish_resumed(conversation)
        else:
            self.scheduler.add(conversation)
        self._changed()
        try:
            return await conversation.done
        finally:
            self.scheduler.remove(conversation)
            self._changed()
            await conversation.peer.close()

    def _changed(self) -> None:
        self._wake.set()
        self._gauges()
        self._on_load(self.load)

    async def run(self, stop: asyncio.Event) -> None:
        """Steps while there is work, until `stop` is set."""
        while not stop.is_set():
            scheduled = self.scheduler.schedule()
            if not scheduled:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), IDLE_WAIT_S)
                continue
            await self.step(scheduled)

    async def step(self, scheduled: list[tuple[Conversation, BatchEntry]]) -> None:
        started = time.perf_counter()
        runnable = self._checked(scheduled)
        prefill = sum(c.last_prefill for c, _ in runnable)
        outputs = await self._run(runnable)
        if outputs is not None:
            await self._postprocess(runnable, outputs)
        self._observe(len(runnable), prefill, time.perf_counter() - started)

    # ---- run --------------------------------------------------------------------------------------------------

    def _checked(self, scheduled: list[tuple[Conversation, BatchEntry]]) -> list[tuple[Conversation, BatchEntry]]:
        """Entries the engine would refuse (bad input, or something this engine does not offer) fail their own
        conversation before the forward, not the whole batch."""
        runnable = []
        for conversation, entry in scheduled:
            try:
                self.engine.check(entry)
            except HaloWeaveError as error:
                self._fail(conversation, error)
                continue
            runnable.append((conversation, entry))
        return runnable

    async def _run(self, runnable: list[tuple[Conversation, BatchEntry]]) -> list[StepOutput | None] | None:
        if not runnable:
            return None
        try:
            return await self.thread.run(self.engine.forward, [entry for _, entry in runnable])
        except Exception as error:
            # Every cache is as it was (the engine undoes a failed forward), but which entry broke it is unknown.
            log.exception("forward of %d conversations failed", len(runnable))
            for conversation, _ in runnable:
                self._fail(conversation, HaloWeaveError(f"the forward failed: {error}"))
            return None

    # ---- postprocess ------------------------------------------------------------------------------------------

    async def _postprocess(
        self, runnable: list[tuple[Conversation, BatchEntry]], outputs: list[StepOutput | None]
    ) -> None:
        sampled = [(c, out) for (c, _), out in zip(runnable, outputs, strict=True) if out is not None]
        if any(out.probe is not None for _, out in sampled):
            sampled = await self._recall(sampled)
        frames = [c.sample(out) for c, out in sampled]
        answers = await asyncio.gather(
            *(c.peer.step(frame) for (c, _), frame in zip(sampled, frames, strict=True)), return_exceptions=True
        )
        settled: list[tuple[Conversation, tracker_pb2.Directive, str]] = []
        for (conversation, _), answer in zip(sampled, answers, strict=True):
            if isinstance(answer, BaseException):
                self._fail(conversation, _as_error(answer))
                continue
            try:
                settled.append((conversation, answer, conversation.settle(answer)))
            except HaloWeaveError as error:
                self._fail(conversation, error)
        finished = [(c, d) for c, d, reason in settled if reason]
        closed = await asyncio.gather(*(c.peer.finish(c.finish_message()) for c, _ in finished), return_exceptions=True)
        # The last step may have pruned too: a held cache should match the dictionary (and its size the budget) now,
        # not only at the next turn's sync. Done after Closed so that `done` is not delayed.
        # Evictions move KV slots: off the event loop. A step with none (most steps) needs no thread hop.
        edits = any(d.reprefill or d.evict_positions for _, d, _ in settled)
        failures = await self.thread.run(self._apply, settled) if edits else self._apply(settled)
        for conversation, failure in failures:
            self._fail(conversation, failure)
        for (conversation, _), outcome in zip(finished, closed, strict=True):
            if isinstance(outcome, BaseException):
                self._fail(conversation, _as_error(outcome))
            elif not conversation.failing:
                conversation.succeed()

    async def _recall(self, sampled: list[tuple[Conversation, StepOutput]]) -> list[tuple[Conversation, StepOutput]]:
        """Conversations whose prompt ended with a recall probe exchange it with the tracker (together); those that
        got sentences back feed their prompt's last token again instead of sampling now."""
        probing = [(c, out) for c, out in sampled if out.probe is not None]
        outcomes = await asyncio.gather(
            *(c.recall.exchange(c, out, self.thread) for c, out in probing), return_exceptions=True
        )
        again: set[int] = set()
        for (conversation, _), outcome in zip(probing, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                self._fail(conversation, _as_error(outcome))
                again.add(id(conversation))
            elif outcome:
                again.add(id(conversation))
        return [(c, out) for c, out in sampled if id(c) not in again]

    @staticmethod
    def _apply(
        settled: list[tuple[Conversation, tracker_pb2.Directive, str]],
    ) -> list[tuple[Conversation, HaloWeaveError]]:
        failures = []
        for conversation, directive, reason in settled:
            try:
                conversation.apply(directive, finished=bool(reason))
            except HaloWeaveError as error:
                if not reason:
                    failures.append((conversation, error))
                    continue
                # The reply itself is complete: only the held cache is in doubt, and the next sync rebuilds it.
                log.warning(
                    "%r: the last directive could not be applied (%s); its cache is dropped", conversation, error
                )
                conversation.cache.clear()
        return failures

    # ---- reopening a reply whose stream broke --------------------------------------------------------------------

    async def _open(self, conversation: Conversation, first: bool) -> None:
        """Opens (or reopens) the reply, retrying resumable errors with backoff until `RESUME_DEADLINE_S`."""
        deadline = time.monotonic() + RESUME_DEADLINE_S
        delay, longest = RESUME_BACKOFF_S
        while True:
            try:
                if not first:
                    try:
                        holds = await conversation.holds_job()
                    except Exception as error:  # Redis restarting: ask again after the back-off
                        raise Unavailable(f"could not check the job's lock: {type(error).__name__}") from None
                    if not holds:
                        # Another worker took the job over (this one was thought dead): the reply is theirs now.
                        raise TakenOver(f"job {conversation.job_id} was taken over by another worker")
                    await conversation.peer.reopen()
                await conversation.open(self.thread)
                return
            except RESUMABLE as error:
                if time.monotonic() + delay > deadline:
                    raise Unavailable(
                        f"the tracker has not answered for {RESUME_DEADLINE_S:.0f} s ({error.message})"
                    ) from None
                log.warning("%r: %s; reopening in %.2f s", conversation, error.message, delay)
                await asyncio.sleep(delay)
                delay, first = min(2 * delay, longest), False

    async def _resume(self, conversation: Conversation, error: HaloWeaveError) -> None:
        log.warning("%r: %s %s; reopening the reply", conversation, error.code, error.message)
        try:
            await self._open(conversation, first=False)
        except AlreadyExists:  # its Finish was committed just before the stream broke: the reply is complete
            conversation.succeed()
            return
        except TakenOver as taken:
            conversation.reported = True  # the worker that holds the job now speaks for it
            conversation.fail_with(taken)
            return
        except HaloWeaveError as failure:  # past the deadline, or refused: the reply fails, clearly
            conversation.resuming = False
            self._fail(conversation, failure, resume=False)
            return
        except Exception as failure:  # never left hanging: whatever broke, the reply ends with an error
            log.exception("%r: reopening failed", conversation)
            conversation.resuming = False
            self._fail(conversation, HaloWeaveError(f"reopening the reply failed: {failure}"), resume=False)
            return
        conversation.resuming = False
        log.info("%r: reopened at step %d", conversation, conversation.step)
        if conversation.ended_before():
            await self._finish_resumed(conversation)
            return
        self.scheduler.add(conversation)
        self._changed()

    async def _finish_resumed(self, conversation: Conversation) -> None:
        """A reopened reply that had ended before its stream broke (only Finish was lost): Finish it now."""
        conversation.stats.reason = conversation.ended_before()
        try:
            await conversation.peer.finish(conversation.finish_message())
        except HaloWeaveError as error:
            self._fail(conversation, error)
            return
        conversation.succeed()

    def _fail(self, conversation: Conversation, error: HaloWeaveError, resume: bool = True) -> None:
        """Takes the conversation out of the batch; the tracker is told in the background, the rest goes on. A
        resumable error reopens the reply instead (unless `resume` is off), in the background too."""
        self.scheduler.remove(conversation)
        if conversation.done.done() or conversation.failing or conversation.resuming:
            return
        if resume and isinstance(error, RESUMABLE):
            conversation.resuming = True
            self._background(self._resume(conversation, error))
            return
        conversation.failing = True
        log.info("%r failed: %s %s", conversation, error.code, error.message)
        self._background(self._report(conversation, error))

    def _background(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._reporting.add(task)
        task.add_done_callback(self._reporting.discard)

    async def _report(self, conversation: Conversation, error: HaloWeaveError) -> None:
        try:
            conversation.reported = await conversation.peer.fail(error.code, error.message)
        except Exception:  # whatever the stream does, the reply ends: the worker then reports the error itself
            log.exception("%r: could not tell the tracker", conversation)
        finally:
            conversation.fail_with(error)

    # ---- metrics ----------------------------------------------------------------------------------------------

    def _observe(self, size: int, prefill: int, seconds: float) -> None:
        if self.stats is None:
            return
        self.stats.observe("batch_size", size)
        self.stats.observe("prefill_tokens_per_step", prefill)
        self.stats.observe("step_seconds", seconds)
        self._gauges()

    def _gauges(self) -> None:
        if self.stats is None:
            return
        self.stats.running = len(self.scheduler.running)
        self.stats.waiting = len(self.scheduler.waiting)
        self.stats.kv_reserved_bytes = self.scheduler.kv_bytes_reserved()


def _as_error(error: BaseException) -> HaloWeaveError:
    if isinstance(error, HaloWeaveError):
        return error
    log.error("unexpected error in a conversation's step", exc_info=error)
    return HaloWeaveError(f"{type(error).__name__}: {error}")
