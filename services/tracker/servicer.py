"""The gRPC face of the engine: protobuf in, one engine call, protobuf out; plus the metrics of each call."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
from haloweave.tracker.v1 import tracker_pb2 as pb
from haloweave.tracker.v1 import tracker_pb2_grpc

from services.common.errors import FailedPrecondition, HaloWeaveError, InvalidArgument, Unavailable
from services.common.grpc_server import REDIS_UNAVAILABLE, handle_errors, handle_stream_errors
from services.tracker import convert, metrics, restore
from services.tracker.engine import Engine
from services.tracker.settings import Settings

log = logging.getLogger(__name__)
# Marking a broken stream's reply orphaned while Redis is away: first wait, longest wait, give up after (seconds).
ORPHAN_RETRY_S = (0.25, 5.0, 300.0)


class TrackerServicer(tracker_pb2_grpc.TrackerServicer):
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._background: set[asyncio.Task[None]] = set()

    @handle_errors
    async def CreateSession(self, request: pb.CreateSessionRequest, context: Any) -> pb.SessionInfo:
        changes = convert.settings_changes_from_pb(request.settings) if request.HasField("settings") else {}
        prompt = request.system_prompt if request.HasField("system_prompt") else None
        state = await self.engine.create_session(changes, prompt)
        return convert.session_info_to_pb(state)

    @handle_errors
    async def GetSession(self, request: pb.SessionRef, context: Any) -> pb.SessionInfo:
        return convert.session_info_to_pb(await self.engine.session(request.session_id))

    @handle_errors
    async def AppendMessage(self, request: pb.AppendMessageRequest, context: Any) -> pb.AppendMessageResponse:
        turn, first, last = await self.engine.append_message(request.session_id, request.role, request.text)
        return pb.AppendMessageResponse(turn_id=turn, first_position=first, last_position=last)

    @handle_errors
    async def GetContext(self, request: pb.SessionRef, context: Any) -> pb.Context:
        return convert.context_to_pb(request.session_id, await self.engine.context(request.session_id))

    @handle_errors
    async def GetSettings(self, request: pb.SessionRef, context: Any) -> pb.Settings:
        return convert.settings_to_pb((await self.engine.session(request.session_id)).settings)

    @handle_errors
    async def UpdateSettings(self, request: pb.UpdateSettingsRequest, context: Any) -> pb.Settings:
        changes = convert.settings_changes_from_pb(request.settings)
        return convert.settings_to_pb(await self.engine.update_settings(request.session_id, changes))

    @handle_errors
    async def Cancel(self, request: pb.SessionRef, context: Any) -> pb.Empty:
        await self.engine.cancel(request.session_id)
        return pb.Empty()

    @handle_errors
    async def Export(self, request: pb.SessionRef, context: Any) -> pb.ExportResponse:
        state, tokens = await self.engine.export(request.session_id)
        return convert.export_to_pb(state, tokens)

    @handle_errors
    async def RestoreState(self, request: pb.RestoreStateRequest, context: Any) -> pb.SessionInfo:
        settings = Settings().updated(convert.settings_changes_from_pb(request.state.settings))
        tokens = convert.tokens_from_pb(request.state)
        restore.check_next_position(request.state.next_position)
        await self.engine.restore(request.session_id, settings, tokens, request.state.next_position)
        return convert.session_info_to_pb(await self.engine.session(request.session_id))

    @handle_errors
    async def DeleteSession(self, request: pb.SessionRef, context: Any) -> pb.SessionDeleted:
        if not request.session_id:
            raise InvalidArgument("session_id is empty")
        removed, cached = await self.engine.delete_session(request.session_id)
        log.info(
            "session %s erased: %d keys%s", request.session_id, removed, ", cached state dropped" if cached else ""
        )
        return pb.SessionDeleted(keys=removed, cached=cached)

    @handle_stream_errors
    async def Generate(
        self, request_iterator: AsyncIterator[pb.GenerateRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.GenerateResponse]:
        session_id = job_id = ""
        settings_version = attempt = -1
        closed = probed = False
        try:
            async for request in request_iterator:
                kind = request.WhichOneof("kind")
                if kind == "open":
                    if session_id:
                        raise FailedPrecondition("this stream is already open; one stream per reply")
                    if not request.open.session_id:
                        raise InvalidArgument("open.session_id is empty")
                    # Named before the Open commits: a stream cancelled while it does still records its end.
                    session_id, job_id = request.open.session_id, request.open.job_id
                    opened = await self.engine.open(session_id, job_id)
                    settings_version, attempt = opened.settings_version, opened.attempt
                    self._count_pruned(opened.settings.prune_mode, opened.pruned_tokens, opened.pruned_sentences)
                    yield convert.opened_to_pb(session_id, opened)
                elif not session_id:
                    raise FailedPrecondition("send Open first")
                elif kind == "frame":
                    received = time.perf_counter()
                    try:
                        outcome = await self.engine.frame(
                            session_id, job_id, convert.frame_from_pb(request.frame), attempt
                        )
                    except HaloWeaveError as error:
                        metrics.FRAME_ERRORS.labels(error.code).inc()
                        raise
                    metrics.STEP_UPDATE_SECONDS.observe(time.perf_counter() - received)
                    metrics.AGGREGATION_SECONDS.observe(outcome.aggregation_seconds)
                    metrics.FRAMES.inc()
                    metrics.ACTIVE_TOKENS.observe(outcome.active_tokens)
                    self._count_pruned(outcome.settings.prune_mode, outcome.pruned_tokens, outcome.pruned_sentences)
                    changed = outcome.settings_version != settings_version
                    settings_version = outcome.settings_version
                    yield convert.directive_to_pb(session_id, outcome, include_settings=changed)
                elif kind == "recall":
                    if probed:
                        raise FailedPrecondition("a reply sends at most one RecallProbe")
                    probed = True
                    recalled = await self.engine.recall(
                        session_id, job_id, convert.probe_from_pb(request.recall), attempt
                    )
                    if recalled.refused:
                        log.warning("session %s: recall probe of job %s: %s", session_id, job_id, recalled.refused)
                    if recalled.positions:
                        metrics.RECALLED_TOKENS.inc(len(recalled.positions))
                        metrics.RECALLED_SENTENCES.inc(recalled.sentences)
                    self._count_pruned("in_place", recalled.pruned_tokens, recalled.pruned_sentences)
                    yield convert.recalled_to_pb(recalled)
                elif kind == "finish":
                    f = request.finish
                    stats = convert.finish_stats_from_pb(f)
                    turn = await self.engine.finish(session_id, job_id, f.reason or "eos", stats, attempt)
                    closed = True
                    yield pb.GenerateResponse(closed=pb.Closed(turn_id=turn))
                    return
                elif kind == "fail":
                    turn = await self.engine.fail(session_id, job_id, request.fail.code, request.fail.message, attempt)
                    closed = True
                    yield pb.GenerateResponse(closed=pb.Closed(turn_id=turn))
                    return
                else:
                    raise InvalidArgument("empty GenerateRequest")
        finally:
            if session_id and not closed:
                # Runs outside the (possibly cancelled) stream task so that the mark is written.
                # Its attempt, when its Open completed: then a newer stream of the job is left alone.
                known = attempt if attempt >= 0 else None
                task = asyncio.get_running_loop().create_task(self._orphan(session_id, job_id, known))
                self._background.add(task)
                task.add_done_callback(self._background.discard)

    async def _orphan(self, session_id: str, job_id: str, attempt: int | None) -> None:
        """Marks the reply orphaned. A stream often ends because Redis went away (restarting, stalled): the mark is
        retried until Redis answers again, or the reply would stay open for good and the session refuse every
        message. A late mark is harmless: it leaves alone a reply that has ended or that a newer stream holds."""
        delay, longest, patience = ORPHAN_RETRY_S
        deadline = time.monotonic() + patience
        while True:
            try:
                await self.engine.orphan(session_id, job_id, attempt)
                return
            except (Unavailable, *REDIS_UNAVAILABLE) as error:
                if time.monotonic() + delay > deadline:
                    log.warning(
                        "session %s: reply of job %s left open, Redis unavailable: %s", session_id, job_id, error
                    )
                    return
                await asyncio.sleep(delay)
                delay = min(2 * delay, longest)
            except Exception:
                log.exception("session %s: could not mark the reply of job %s orphaned", session_id, job_id)
                return

    @staticmethod
    def _count_pruned(mode: str, tokens: int, sentences: int) -> None:
        if tokens:
            metrics.PRUNED_TOKENS.labels(mode).inc(tokens)
            metrics.PRUNED_SENTENCES.inc(sentences)
