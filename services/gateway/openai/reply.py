"""Following one reply on the session's event Stream, as text: what the OpenAI API returns of it.

The relay's own `StreamReader` reads the Stream (from the id taken before the message was appended) into an
outbox; here its frames become text deltas. A generated token's event carries its `step`; the template's header and
trailer around the reply do not, and are not text. Two things are held back until the next token or the end: the
newest token (it may be the model's end token, which a reason `eos` says it was) and any tail that could begin a stop
string (OpenAI leaves the stop string out of the text; the worker stops once the decoded text contains one).
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis

from services.common.errors import HaloWeaveError, Unavailable
from services.gateway.relay import Outbox, StreamReader

OUTBOX_FRAMES = 4096
OUTBOX_BYTES = 8 * 1024 * 1024
STALL_S = 30.0


class ReplyFailed(HaloWeaveError):
    """The reply ended with an `error` event (its code is the event's)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(slots=True)
class Outcome:
    text: str
    finish_reason: str  # stop | length
    completion_tokens: int
    prompt_tokens: int
    header_tokens: int  # the template's header of the reply, part of the prompt
    active_tokens: int
    pruned_tokens: int
    cancelled: bool = False  # the reply was stopped (the session is being erased, or its stream closed)


@dataclass(slots=True)
class Delta:
    text: str = ""
    event: dict[str, Any] | None = None  # a brightness or pruned event, when asked for
    outcome: Outcome | None = None  # the last one


@dataclass(slots=True)
class _Text:
    stop: list[str]
    pieces: list[str] = field(default_factory=list)
    sent: int = 0  # characters of the joined pieces already given out

    def add(self, piece: str) -> str:
        """Takes a token's piece; returns what can be given out now."""
        self.pieces.append(piece)
        safe = "".join(self.pieces[:-1])  # the newest token waits: it may be the end token
        cut = _stop_at(safe, self.stop)
        if cut is None:
            cut = len(safe) - _partial_stop(safe, self.stop)
        return self._give(safe, cut)

    def finish(self, reason: str) -> str:
        pieces = self.pieces[:-1] if reason == "eos" and self.pieces else self.pieces
        text = "".join(pieces)
        cut = _stop_at(text, self.stop)
        return self._give(text, len(text) if cut is None else cut)

    def _give(self, text: str, upto: int) -> str:
        if upto <= self.sent:
            return ""
        out, self.sent = text[self.sent : upto], upto
        return out


def _stop_at(text: str, stop: list[str]) -> int | None:
    found = [at for at in (text.find(s) for s in stop) if at >= 0]
    return min(found) if found else None


def _partial_stop(text: str, stop: list[str]) -> int:
    """The length of the longest tail of `text` that is the start of a stop string."""
    longest = 0
    for s in stop:
        for n in range(min(len(s) - 1, len(text)), longest, -1):
            if text.endswith(s[:n]):
                longest = n
                break
    return longest


async def follow(
    redis: Redis, session_id: str, after: int, job_id: str, stop: list[str], active_before: int, events: list[str]
) -> AsyncGenerator[Delta, None]:
    """Yields the reply's text as it comes, the asked-for events, and last the outcome.

    `active_before`: the session's active tokens before the reply opened (after the new message). The prompt the
    model saw is those, plus the assistant header, minus what the opening pruned.
    """
    outbox = Outbox(OUTBOX_FRAMES, OUTBOX_BYTES)
    reader = StreamReader(redis, session_id, after, uuid.uuid4().hex, outbox, lambda _frame: None, STALL_S)
    task = asyncio.create_task(reader.run())
    text = _Text(stop)
    header = pruned_before = generated = 0
    getter: asyncio.Future[Any] | None = None
    try:
        while True:
            getter = asyncio.ensure_future(outbox.get())
            done, _ = await asyncio.wait({getter, task}, timeout=STALL_S, return_when=asyncio.FIRST_COMPLETED)
            if getter not in done:
                getter.cancel()
                if task in done:
                    task.result()  # raises what stopped the reader
                raise Unavailable(f"the reply made no progress for {STALL_S:.0f} s")
            frame = json.loads(getter.result().text)
            kind = frame.get("type")
            if kind == "token" and frame.get("role") == "assistant":
                if "step" in frame:
                    generated += 1
                    delta = text.add(str(frame.get("token", "")))
                    if delta:
                        yield Delta(text=delta)
                elif generated == 0:
                    header += 1
            elif kind == "pruned":
                if generated == 0:
                    pruned_before += len(frame.get("positions", []))
                if "pruned" in events:
                    yield Delta(event=frame)
            elif kind == "brightness" and "brightness" in events:
                yield Delta(event=frame)
            elif kind == "error" and frame.get("job_id") in (None, job_id):
                raise ReplyFailed(str(frame.get("code", "internal")), str(frame.get("message", "the reply failed")))
            elif kind == "done":
                stats = frame.get("stats", {})
                reason = str(stats.get("reason", "eos"))
                rest = text.finish(reason)
                if rest:
                    yield Delta(text=rest)
                yield Delta(
                    outcome=Outcome(
                        text="".join(text.pieces)[: text.sent],
                        finish_reason="length" if reason == "length" else "stop",
                        completion_tokens=int(stats.get("tokens", generated)),
                        prompt_tokens=active_before + header - pruned_before,
                        header_tokens=header,
                        active_tokens=int(stats.get("active_tokens", 0)),
                        pruned_tokens=int(stats.get("pruned_tokens", 0)),
                        cancelled=reason == "cancelled",
                    )
                )
                return
    finally:
        task.cancel()
        if getter is not None:
            getter.cancel()
        await asyncio.gather(task, return_exceptions=True)
