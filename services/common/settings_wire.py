"""Settings on the wire: `tracker.v1.Settings` carries them as one JSON object, checked against the schema
(services/common/session_settings.py) by whoever builds a message and by whoever reads one."""

from __future__ import annotations

from typing import Any

from haloweave.tracker.v1 import tracker_pb2

from services.common import session_settings

_KEYWORDS = object()  # `to_pb(name=value, ...)`: the settings are the keyword arguments


def to_pb(changes: Any = _KEYWORDS, /, **values: Any) -> tracker_pb2.Settings:
    """Some settings (an update, or a new session's overrides) as a message: `to_pb({"boost": 2})`, `to_pb(boost=2)`.
    Whatever a client sent is passed as it is (null, a list: refused). Refused with InvalidArgument, naming the field,
    when a value is of the wrong type or out of bounds."""
    if changes is _KEYWORDS:
        changes = values
    elif values:
        raise TypeError("to_pb takes the settings as one object or as keywords, not both")
    checked = session_settings.change(changes)
    return tracker_pb2.Settings(json=session_settings.encode_change(checked) if checked else "")


def effective_to_pb(settings: session_settings.SessionSettings) -> tracker_pb2.Settings:
    """A session's effective settings: every setting."""
    return tracker_pb2.Settings(json=settings.to_json())


def from_pb(message: tracker_pb2.Settings) -> dict[str, Any]:
    """The settings a message holds (only those it sets), checked field by field; combinations are checked where
    they meet a session's other settings."""
    return session_settings.decode_change(message.json)
