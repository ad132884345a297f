"""Redis names shared between services. Each service owns the keys under its prefix; these are the meeting points."""

from __future__ import annotations

# Jobs for the inference workers: one Stream, one consumer group (DESIGN.md section 1).
JOBS_STREAM = "hw:jobs"
JOBS_GROUP = "workers"


def session_prefix(session_id: str) -> str:
    """Keys under this prefix belong to the tracker, except the event stream and its bookkeeping below."""
    return f"hw:s:{{{session_id}}}"  # the hash tag keeps a session's keys in one Redis Cluster slot


def events_stream(session_id: str) -> str:
    """The per-session event Stream the gateway relays to browsers. Entry ids are `<event_id>-0`."""
    return f"{session_prefix(session_id)}:events"


def events_counter(session_id: str) -> str:
    """The id of the newest event (the counter every append increments)."""
    return f"{session_prefix(session_id)}:event_seq"


def events_sizes(session_id: str) -> str:
    """A list of the sizes of the kept events, oldest first (services.common.events bounds the Stream with it)."""
    return f"{session_prefix(session_id)}:event_sizes"


def events_bytes(session_id: str) -> str:
    """The sum of `events_sizes`."""
    return f"{session_prefix(session_id)}:event_bytes"


def auth_key(session_id: str) -> str:
    """Owned by the gateway: the sha256 of the session's secret token."""
    return f"hw:auth:{{{session_id}}}"
