"""The WebSocket contract (docs/websocket.md): client frame parsing, error codes and close codes.

Parsing is pure: a text frame in, a validated `ClientFrame` out, or a `ProtocolError` whose code goes back to the
client in an `error` frame. Nothing here touches the socket, Redis or the peers.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

PROTOCOL = "haloweave.chat.v1"

# Error codes (stable: clients switch on them).
BAD_JSON = "bad_json"  # not JSON, or not a JSON object
UNKNOWN_TYPE = "unknown_type"  # `type` missing or not one of the client frame types
BAD_FRAME = "bad_frame"  # a known type with missing or wrongly typed fields
FRAME_TOO_LARGE = "frame_too_large"
NO_SESSION = "no_session"  # a frame other than hello before the session is established
SESSION_BOUND = "session_bound"  # a second hello on a connection that already has a session
UNKNOWN_SESSION = "unknown_session"
UNAUTHORIZED = "unauthorized"
INVALID_SETTINGS = "invalid_settings"
BUSY = "busy"  # user_message while a reply is being generated
UNAVAILABLE = "unavailable"  # a peer (tracker, Redis) did not answer
INTERNAL = "internal"
IDLE_TIMEOUT = "idle_timeout"  # terminal: the connection closes after it
SLOW_CONSUMER = "slow_consumer"  # terminal: the connection closes after it
SESSION_DELETED = "session_deleted"  # terminal: the session was erased (DELETE /v1/sessions/{id})

# WebSocket close codes (4000-4999 are the application's).
CLOSE_NORMAL = 1000
CLOSE_IDLE = 4408
CLOSE_SLOW_CONSUMER = 4429
CLOSE_SESSION_DELETED = 4410  # as HTTP 410 Gone
CLOSE_SHUTDOWN = 1001

CLIENT_TYPES = ("hello", "user_message", "settings", "cancel")

# A JSON escape of a UTF-16 surrogate: the only way a lone surrogate (which no UTF-8 encoder accepts, so neither
# Redis nor protobuf can carry it) gets into a decoded frame; a text frame itself is always valid UTF-8.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_SURROGATE = re.compile("[\ud800-\udfff]")


class ProtocolError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class ClientFrame:
    type: str
    session_id: str | None = None
    token: str | None = None
    last_event_id: int | None = None
    text: str = ""
    settings: dict[str, Any] = field(default_factory=dict)


def _optional_str(data: dict[str, Any], name: str) -> str | None:
    value = data.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise ProtocolError(BAD_FRAME, f"{name} must be a non-empty string")
    return value


def parse(raw: str | bytes, max_frame_bytes: int, max_message_chars: int) -> ClientFrame:
    size = len(raw) if isinstance(raw, bytes) else len(raw.encode())
    if size > max_frame_bytes:
        raise ProtocolError(FRAME_TOO_LARGE, f"frame of {size} bytes exceeds the limit of {max_frame_bytes}")
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as error:
        raise ProtocolError(BAD_JSON, f"frame is not valid JSON: {error}") from None
    except RecursionError:
        raise ProtocolError(BAD_JSON, "frame is nested too deeply") from None
    if not isinstance(data, dict):
        raise ProtocolError(BAD_JSON, "frame must be a JSON object")
    decoded = raw if isinstance(raw, str) else raw.decode(errors="replace")
    if _SURROGATE_ESCAPE.search(decoded) and _has_surrogate(data):
        raise ProtocolError(BAD_JSON, "frame holds a lone surrogate escape (\\ud800-\\udfff): not valid Unicode")
    kind = data.get("type")
    if kind not in CLIENT_TYPES:
        raise ProtocolError(UNKNOWN_TYPE, f"unknown frame type {kind!r}; expected one of {', '.join(CLIENT_TYPES)}")
    if kind == "hello":
        last = data.get("last_event_id")
        if last is not None and (isinstance(last, bool) or not isinstance(last, int) or last < 0):
            raise ProtocolError(BAD_FRAME, "last_event_id must be a non-negative integer")
        session_id = _optional_str(data, "session_id")
        token = _optional_str(data, "token")
        if session_id is None and (token is not None or last is not None):
            raise ProtocolError(BAD_FRAME, "token and last_event_id need a session_id")
        if session_id is not None and token is None:
            raise ProtocolError(UNAUTHORIZED, "resuming a session needs its token")
        return ClientFrame("hello", session_id=session_id, token=token, last_event_id=last)
    if kind == "user_message":
        text = data.get("text")
        if not isinstance(text, str) or not text.strip():
            raise ProtocolError(BAD_FRAME, "text must be a non-empty string")
        if len(text) > max_message_chars:
            raise ProtocolError(FRAME_TOO_LARGE, f"text of {len(text)} characters exceeds {max_message_chars}")
        return ClientFrame("user_message", text=text)
    if kind == "settings":
        settings = data.get("settings")
        if not isinstance(settings, dict):
            raise ProtocolError(BAD_FRAME, "settings must be a JSON object")
        return ClientFrame("settings", settings=settings)
    return ClientFrame("cancel")


def _has_surrogate(data: Any) -> bool:
    """Whether any key or string in a decoded frame holds a lone surrogate (iterative: frames nest deeply)."""
    pending = [data]
    while pending:
        value = pending.pop()
        if isinstance(value, str):
            if _SURROGATE.search(value):
                return True
        elif isinstance(value, dict):
            pending.extend(value.keys())
            pending.extend(value.values())
        elif isinstance(value, list):
            pending.extend(value)
    return False


def error_frame(code: str, message: str, event_id: int = 0) -> dict[str, Any]:
    return {"type": "error", "event_id": event_id, "code": code, "message": message}
