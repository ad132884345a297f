"""One WebSocket chat connection: hello → session, then user messages, settings and cancels (docs/websocket.md).

Three tasks per connection: the receive loop (client frames, handled one at a time), the sender (the only writer to
the socket, draining a bounded outbox) and, once a session is bound, the Stream reader that fills the outbox. Errors
caused by this connection are appended to the session Stream addressed to it, so every frame a client sees carries an
increasing event id; before a session exists they carry event id 0, and so does the error that ends a connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from fastapi import WebSocket, WebSocketDisconnect
from redis.asyncio import Redis
from redis.exceptions import RedisError

from services.common import events, keys
from services.common.errors import FailedPrecondition, HaloWeaveError, InvalidArgument, NotFound
from services.gateway import auth, jobs, protocol, settings_codec
from services.gateway.config import GatewayConfig
from services.gateway.erasures import SessionSockets
from services.gateway.metrics import GatewayMetrics
from services.gateway.peers import Peers
from services.gateway.relay import Outbox, Outgoing, Overflow, StreamReader, encode, oldest_event_id

log = logging.getLogger(__name__)

# Terminal errors get this long to reach a client that may have stopped reading.
FAREWELL_TIMEOUT_S = 2.0
# A `hello` beyond HALOWEAVE_GATEWAY_MAX_SESSIONS (the code workers use for a full queue: try again shortly).
OVERLOADED = "overloaded"


@dataclass(slots=True)
class Deps:
    config: GatewayConfig
    redis: Redis  # short commands
    peers: Peers
    metrics: GatewayMetrics
    # The Stream readers' own client: each blocks in XREAD (up to 2 s at a time) on a connection of its own, so they
    # must not share a pool with the short commands, which they would starve. None: `redis`.
    readers: Redis | None = None
    following: int = 0  # connections whose reader follows a session's Stream now (at most config.max_sessions)
    sockets: SessionSockets = field(default_factory=SessionSockets)  # closed when their session is erased


class Connection:
    def __init__(self, ws: WebSocket, deps: Deps) -> None:
        self.ws = ws
        self.deps = deps
        self.id = uuid.uuid4().hex
        self.session_id: str | None = None
        self.outbox = Outbox(deps.config.send_buffer_frames, deps.config.send_buffer_bytes)
        self.last_activity = time.monotonic()
        self.generating_job: str | None = None  # the generate job this connection enqueued, until its reply ends
        self._reader: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        self._stop_reason: tuple[str, str, int] | None = None

    # ---- lifecycle -------------------------------------------------------------------------------------------

    async def serve(self) -> None:
        await self.ws.accept()
        metrics = self.deps.metrics
        metrics.connections.inc()
        sender = asyncio.create_task(self._send_loop())
        watchdog = asyncio.create_task(self._watch_idle())
        receiver = asyncio.create_task(self._receive_loop())
        stopper = asyncio.create_task(self._stop.wait())
        try:
            await asyncio.wait({receiver, stopper, sender}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            tasks = [t for t in (receiver, stopper, sender, watchdog, self._reader) if t is not None]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if self._stop_reason is not None:
                await self._farewell(*self._stop_reason)
            if self._reader is not None:
                self.deps.following -= 1
            if self.session_id is not None:
                self.deps.sockets.discard(self.session_id, self.id)
            metrics.connections.dec()

    def _terminate(self, code: str, message: str, close_code: int) -> None:
        if self._stop_reason is None:
            self._stop_reason = (code, message, close_code)
            self.deps.metrics.errors.labels(code).inc()
        self._stop.set()

    async def _farewell(self, code: str, message: str, close_code: int) -> None:
        """Sends the terminal error straight to the socket (the outbox is gone) and closes, each bounded in time.

        The error is kept in the session Stream (addressed to this connection) but goes out with event id 0: it
        overtakes events the client has not been sent, and a client that resumed after its Stream id would miss them.
        """
        # An erased session's Stream is gone and stays gone: that farewell goes to the socket only.
        if self.session_id is not None and code != protocol.SESSION_DELETED:
            with contextlib.suppress(RedisError):
                await self._append_error(code, message)
        with contextlib.suppress(Exception):
            text = encode(protocol.error_frame(code, message, 0))
            await asyncio.wait_for(self.ws.send_text(text), FAREWELL_TIMEOUT_S)
            self.deps.metrics.frames.labels("out", "error").inc()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.ws.close(close_code, reason=code), FAREWELL_TIMEOUT_S)

    async def _watch_idle(self) -> None:
        timeout = self.deps.config.idle_timeout_s
        while True:
            left = self.last_activity + timeout - time.monotonic()
            if left <= 0:
                self._terminate(protocol.IDLE_TIMEOUT, f"no frames for {timeout:g} s", protocol.CLOSE_IDLE)
                return
            await asyncio.sleep(left)

    async def _send_loop(self) -> None:
        metrics = self.deps.metrics
        while True:
            item = await self.outbox.get()
            await self.ws.send_text(item.text)
            self.last_activity = time.monotonic()
            metrics.frames.labels("out", item.type).inc()
            if item.read_at is not None:
                metrics.delivery.observe(self.last_activity - item.read_at)

    async def _receive_loop(self) -> None:
        while True:
            try:
                message = await self.ws.receive()
            except WebSocketDisconnect:
                return
            if message["type"] == "websocket.disconnect":
                return
            self.last_activity = time.monotonic()
            raw = message.get("text")
            if raw is None:
                await self._error(protocol.BAD_JSON, "binary frames are not accepted; send JSON text frames")
                continue
            await self._handle(raw)

    async def _run_reader(self, reader: StreamReader) -> None:
        try:
            await reader.run()
        except Overflow as overflow:
            self._terminate(protocol.SLOW_CONSUMER, str(overflow), protocol.CLOSE_SLOW_CONSUMER)
        except RedisError as error:
            log.warning("event stream of %s unreadable: %s", self.session_id, error)
            self._terminate(protocol.UNAVAILABLE, "the event stream is unavailable; reconnect", 1011)

    # ---- client frames ---------------------------------------------------------------------------------------

    async def _handle(self, raw: str) -> None:
        config = self.deps.config
        try:
            frame = protocol.parse(raw, config.max_frame_bytes, config.max_message_chars)
            self.deps.metrics.frames.labels("in", frame.type).inc()
            if frame.type == "hello":
                await self._hello(frame)
            elif self.session_id is None:
                raise protocol.ProtocolError(protocol.NO_SESSION, "send hello first")
            elif frame.type == "user_message":
                await self._user_message(self.session_id, frame.text)
            elif frame.type == "settings":
                await self._settings(self.session_id, frame.settings)
            else:
                await self.deps.peers.cancel(self.session_id)
        except protocol.ProtocolError as error:
            await self._error(error.code, error.message)
        except NotFound as error:
            if self.session_id is not None:
                # The bound session is gone, or going: erased. Its Stream must not be written to again.
                self._session_deleted()
            else:
                await self._error(protocol.UNKNOWN_SESSION, error.message)
        except HaloWeaveError as error:
            code = protocol.UNAVAILABLE if error.code in ("unavailable", "internal") else protocol.BAD_FRAME
            await self._error(code, error.message)
        except RedisError as error:
            await self._error(protocol.UNAVAILABLE, f"Redis: {error}")
        except Exception:
            log.exception("unhandled error on connection %s", self.id)
            await self._error(protocol.INTERNAL, "internal error; the connection is still usable")

    async def _hello(self, frame: protocol.ClientFrame) -> None:
        if self.session_id is not None:
            raise protocol.ProtocolError(
                protocol.SESSION_BOUND, f"this connection already has session {self.session_id}"
            )
        deps = self.deps
        if deps.following >= deps.config.max_sessions:
            raise protocol.ProtocolError(
                OVERLOADED, f"this gateway follows {deps.following} sessions, its most; try again shortly"
            )
        deps.following += 1  # taken now, so that a burst of hellos in flight cannot overshoot
        try:
            await self._bind(frame)
        finally:
            if self._reader is None:  # refused (or the connection went): the reader never started
                deps.following -= 1

    async def _bind(self, frame: protocol.ClientFrame) -> None:
        """Creates or checks the session, answers `session` and starts the reader from the client's position."""
        redis, peers = self.deps.redis, self.deps.peers
        if frame.session_id is None:
            info = await peers.create_session()
            token = auth.new_token()
            await auth.register(redis, info.session_id, token)
            start, resumed = 0, False
        else:
            verdict = await auth.check(redis, frame.session_id, frame.token)
            if verdict == "unknown_session":
                raise protocol.ProtocolError(protocol.UNKNOWN_SESSION, f"no session {frame.session_id}")
            if verdict != "ok":
                raise protocol.ProtocolError(protocol.UNAUTHORIZED, "wrong token for this session")
            if await redis.exists(keys.erasing_key(frame.session_id)):
                raise protocol.ProtocolError(protocol.UNKNOWN_SESSION, f"session {frame.session_id} is being deleted")
            info = await peers.get_session(frame.session_id)
            token, start, resumed = frame.token or "", frame.last_event_id or 0, True
        # A session reloaded by the tracker from Redis may carry no model name; the workers know what they serve.
        model = info.model or await peers.served_model()
        session_id = info.session_id
        latest = await jobs.last_event_id(redis, session_id)
        if start > latest:
            raise protocol.ProtocolError(
                protocol.BAD_FRAME, f"last_event_id {start} is ahead of the session ({latest})"
            )
        # The Stream is bounded: events before the oldest kept one were trimmed and cannot be replayed.
        oldest = await oldest_event_id(redis, session_id)
        truncated = start < latest and (oldest is None or start < oldest - 1)
        self.session_id = session_id
        session = {
            "type": "session",
            "event_id": start,
            "protocol": protocol.PROTOCOL,
            "session_id": session_id,
            "token": token,
            "model": model,
            "settings": settings_codec.from_pb(info.settings),
            "last_event_id": latest,
            "resumed": resumed,
            "generating": info.generating,
            "replay_truncated": truncated,
            "limits": {
                "max_frame_bytes": self.deps.config.max_frame_bytes,
                "max_message_chars": self.deps.config.max_message_chars,
                "idle_timeout_s": self.deps.config.idle_timeout_s,
            },
        }
        self._post(session)
        self.deps.sockets.add(session_id, self.id, self._session_deleted)
        reader = StreamReader(
            self.deps.readers or redis,
            session_id,
            start,
            self.id,
            self.outbox,
            self._observe,
            self.deps.config.slow_client_s,
            truncated,
        )
        self._reader = asyncio.create_task(self._run_reader(reader))

    def _session_deleted(self) -> None:
        self._terminate(protocol.SESSION_DELETED, "this session was deleted", protocol.CLOSE_SESSION_DELETED)

    async def _user_message(self, session_id: str, text: str) -> None:
        peers = self.deps.peers
        if self.generating_job is not None:
            raise protocol.ProtocolError(protocol.BUSY, "a reply is being generated; cancel it or wait for done")
        # Whether another connection's reply is running is the tracker's to say: it refuses while one is, and closes
        # one whose stream ended without an answer (a crash) instead of refusing forever.
        try:
            await peers.append_user_message(session_id, text)
        except FailedPrecondition as error:
            raise protocol.ProtocolError(protocol.BUSY, error.message) from None
        except InvalidArgument as error:
            raise protocol.ProtocolError(protocol.BAD_FRAME, error.message) from None
        self.generating_job = await jobs.enqueue(self.deps.redis, "generate", session_id)

    async def _settings(self, session_id: str, settings: dict[str, Any]) -> None:
        try:
            await self.deps.peers.update_settings(session_id, settings_codec.to_pb(settings))
        except InvalidArgument as error:
            raise protocol.ProtocolError(protocol.INVALID_SETTINGS, error.message) from None

    def _observe(self, frame: dict[str, Any]) -> None:
        """Called by the reader for each session-wide event: a reply ends with `done` or an `error`.

        Job errors do not always name their job (a worker's failure relayed by the tracker); a stale clear is harmless
        because the tracker itself refuses a message while a reply is open (`busy` again).
        """
        if frame["type"] in ("done", "error"):
            self.generating_job = None

    # ---- server frames ---------------------------------------------------------------------------------------

    def _post(self, frame: dict[str, Any]) -> None:
        try:
            self.outbox.put_nowait(Outgoing(encode(frame), frame["type"], None))
        except asyncio.QueueFull:
            self._terminate(protocol.SLOW_CONSUMER, "the client is not reading", protocol.CLOSE_SLOW_CONSUMER)

    async def _append_error(self, code: str, message: str) -> int:
        assert self.session_id is not None
        data = {"code": code, "message": message, "connection": self.id}
        return await events.append_event(
            self.deps.redis, self.session_id, "error", data, self.deps.config.stream_limits
        )

    async def _error(self, code: str, message: str) -> None:
        """A connection-local error: through the session Stream when bound (ids stay increasing), else id 0."""
        self.deps.metrics.errors.labels(code).inc()
        if self.session_id is not None and self._reader is not None:
            try:
                await self._append_error(code, message)
                return
            except RedisError:
                pass  # Redis is down: still tell the client, outside the Stream
        self._post(protocol.error_frame(code, message))
