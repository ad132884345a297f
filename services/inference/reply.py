"""The tracker's side of one reply, as the worker sees it: the Generate stream of protos/haloweave/tracker/v1.

Open → Opened (settings + active context) → (recall on, once) RecallProbe → Recalled → per step a Frame (the sampled
token and its attention row) answered by a Directive (the token's position, evictions or a reprefill, new settings,
cancel) → Finish or Fail → Closed.

`TrackerPeer` speaks it over gRPC; `LocalPeer` answers the same messages in-process (a fixed context, no pruning),
for tests and benchmarks that drive the engine without a tracker. A `Conversation` talks to either.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Literal, Protocol

from haloweave.tracker.v1 import tracker_pb2

from services.common.errors import FailedPrecondition, HaloWeaveError
from services.inference.clients import GenerateStream, TrackerClient

log = logging.getLogger(__name__)


class Peer(Protocol):
    async def open(self) -> tracker_pb2.Opened: ...

    async def step(self, frame: tracker_pb2.Frame) -> tracker_pb2.Directive: ...

    async def recall(self, probe: tracker_pb2.RecallProbe) -> tracker_pb2.Recalled: ...

    async def finish(self, finish: tracker_pb2.Finish) -> None: ...

    async def fail(self, code: str, message: str) -> bool:
        """Tells the tracker the reply failed; True when it took it (and so tells the client itself)."""
        ...

    async def close(self) -> None: ...

    async def reopen(self) -> None:
        """Drops the stream and starts a new one for the same job (the next call is `open` again)."""
        ...


class TrackerPeer:
    def __init__(self, tracker: TrackerClient, session_id: str, job_id: str) -> None:
        self.session_id = session_id
        self.job_id = job_id
        self._tracker = tracker
        self._stream: GenerateStream = tracker.generate()

    async def reopen(self) -> None:
        await self._stream.close()
        self._stream = self._tracker.generate()

    async def _ask(
        self, request: tracker_pb2.GenerateRequest, answer: Literal["opened", "directive", "recalled"], what: str
    ) -> Any:
        """Sends one message and returns the reply's `answer` field; any other reply is a protocol error."""
        await self._stream.send(request)
        reply = await self._stream.recv()
        if not reply.HasField(answer):
            raise FailedPrecondition(f"tracker answered {what} with {reply.WhichOneof('kind')}")
        return getattr(reply, answer)

    async def open(self) -> tracker_pb2.Opened:
        request = tracker_pb2.GenerateRequest(open=tracker_pb2.Open(session_id=self.session_id, job_id=self.job_id))
        opened: tracker_pb2.Opened = await self._ask(request, "opened", "Open")
        return opened

    async def step(self, frame: tracker_pb2.Frame) -> tracker_pb2.Directive:
        directive: tracker_pb2.Directive = await self._ask(
            tracker_pb2.GenerateRequest(frame=frame), "directive", "a Frame"
        )
        return directive

    async def recall(self, probe: tracker_pb2.RecallProbe) -> tracker_pb2.Recalled:
        recalled: tracker_pb2.Recalled = await self._ask(
            tracker_pb2.GenerateRequest(recall=probe), "recalled", "a RecallProbe"
        )
        return recalled

    async def finish(self, finish: tracker_pb2.Finish) -> None:
        await self._stream.send(tracker_pb2.GenerateRequest(finish=finish))
        await self._closed()

    async def fail(self, code: str, message: str) -> bool:
        # If the tracker itself ended the stream, it told nobody: the worker then reports the error on completion.
        try:
            await self._stream.send(tracker_pb2.GenerateRequest(fail=tracker_pb2.Fail(code=code, message=message)))
            await self._closed()
            return True
        except HaloWeaveError:
            log.info("job %s: the tracker's stream is gone; the worker reports %s", self.job_id, code)
            return False

    async def _closed(self) -> None:
        reply = await self._stream.recv()
        if not reply.HasField("closed"):
            raise FailedPrecondition(f"tracker answered Finish with {reply.WhichOneof('kind')}, not Closed")

    async def close(self) -> None:
        await self._stream.close()


class LocalPeer:
    """A tracker stand-in: the context is the prompt, and every sampled token is appended at the next position.
    Nothing is pruned unless `evictions` says so (step -> positions dropped after it), in place or, with
    `reprefill=True`, as a rebuild from what survives; `settings` changes (step -> Settings) arrive with that step's
    Directive, and `cancelled()` is asked at every step. `frames` keeps what the conversation sent."""

    def __init__(
        self,
        token_ids: list[int],
        positions: list[int] | None = None,
        settings: tracker_pb2.Settings | None = None,
        cancelled: Callable[[], bool] | None = None,
        evictions: dict[int, list[int]] | None = None,
        reprefill: bool = False,
        changes: dict[int, tracker_pb2.Settings] | None = None,
    ) -> None:
        self.positions = list(positions if positions is not None else range(len(token_ids)))
        self.token_ids = list(token_ids)
        self.settings = settings if settings is not None else tracker_pb2.Settings()
        self.next_position = (self.positions[-1] + 1) if self.positions else 0
        self.cancelled = cancelled or (lambda: False)
        self.evictions = evictions or {}
        self.reprefill = reprefill
        self.changes = changes or {}
        self.frames: list[tracker_pb2.Frame] = []
        self.finished: tracker_pb2.Finish | None = None
        self.failed: tuple[str, str] | None = None

    def _context(self) -> tracker_pb2.Context:
        return tracker_pb2.Context(positions=self.positions, token_ids=self.token_ids, next_position=self.next_position)

    async def open(self) -> tracker_pb2.Opened:
        return tracker_pb2.Opened(turn_id=1, settings=self.settings, context=self._context())

    async def step(self, frame: tracker_pb2.Frame) -> tracker_pb2.Directive:
        self.frames.append(frame)
        position, self.next_position = self.next_position, self.next_position + 1
        self.positions.append(position)
        self.token_ids.append(frame.token_id)
        directive = tracker_pb2.Directive(step=frame.step, position=position, cancel=self.cancelled())
        gone = set(self.evictions.get(frame.step, []))
        if gone:
            kept = [(p, t) for p, t in zip(self.positions, self.token_ids, strict=True) if p not in gone]
            self.positions, self.token_ids = [p for p, _ in kept], [t for _, t in kept]
            if self.reprefill:
                directive.reprefill = True
                directive.context.CopyFrom(self._context())
            else:
                directive.evict_positions.extend(sorted(gone))
        if frame.step in self.changes:
            directive.settings.CopyFrom(self.changes[frame.step])
        return directive

    async def recall(self, probe: tracker_pb2.RecallProbe) -> tracker_pb2.Recalled:
        return tracker_pb2.Recalled()  # nothing is ever pruned here, so nothing comes back

    async def finish(self, finish: tracker_pb2.Finish) -> None:
        self.finished = finish

    async def fail(self, code: str, message: str) -> bool:
        self.failed = (code, message)
        return True

    async def close(self) -> None:
        return None

    async def reopen(self) -> None:
        return None
