"""Settings as JSON objects (WebSocket and REST) and as `tracker.v1.Settings` messages.

Both directions go through the one schema (services/common/session_settings.py): an update is checked field by field
here, so an unknown name, a wrong JSON type or a value out of bounds is refused before anything is sent on; the
tracker validates the merged result (combinations, and a budget below the tokens that are never pruned).
"""

from __future__ import annotations

from typing import Any

from haloweave.tracker.v1 import tracker_pb2

from services.common import session_settings, settings_wire


def field_names() -> tuple[str, ...]:
    """Every name an update may hold: the settings, and the update-only `clear_stop`."""
    return (*session_settings.names(), *session_settings.UPDATE_ONLY)


def to_pb(settings: Any) -> tracker_pb2.Settings:
    """A client's update as a message; InvalidArgument (naming the field) when it does not fit the schema."""
    return settings_wire.to_pb(settings)


def from_pb(message: tracker_pb2.Settings) -> dict[str, Any]:
    """The effective settings the tracker sent, as plain JSON values (every setting)."""
    return session_settings.SessionSettings.from_json(message.json).to_dict()
