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


def erasing_key(session_id: str) -> str:
    """Owned by the gateway: set while the session is being erased; no job of it is enqueued then."""
    return f"hw:erasing:{{{session_id}}}"


# ---- finding everything of one session (its erase: DELETE /v1/sessions/{id}) -------------------------------------
#
# Two rules make every key of a session findable without a list that someone must keep up to date:
# 1. a key *named* after a session carries its hash tag `{<sid>}` (session_tag), whoever owns it;
# 2. a key that only *refers* to a session (an index from something else to it, e.g. from an API key's conversation)
#    is named in the session's registry Set (session_registry) by whoever writes it, in the same transaction.
# The erase deletes what matches rule 1 (session_match, SCAN) and what the registry names (then the registry).


def session_tag(session_id: str) -> str:
    """The part of every key named after a session: its Redis Cluster hash tag."""
    return f"{{{session_id}}}"


def _glob(text: str) -> str:
    return "".join(f"\\{c}" if c in "*?[]\\" else c for c in text)


def session_match(session_id: str) -> str:
    """A SCAN MATCH pattern for every key named after the session (rule 1)."""
    return f"*{_glob(session_tag(session_id))}*"


def session_prefix_match(session_id: str) -> str:
    """A SCAN MATCH pattern for the keys under `session_prefix` (the tracker's and the event Stream's)."""
    return f"{_glob(session_prefix(session_id))}:*"


def session_registry(session_id: str) -> str:
    """A Set of the names of keys that refer to the session without being named after it (rule 2)."""
    return f"hw:reg:{session_tag(session_id)}"


# Published (the session id) when a session has been erased: every gateway closes the connections bound to it.
SESSION_ERASED_CHANNEL = "hw:erased"


# ---- the OpenAI-compatible API (owned by the gateway, services/gateway/openai) ---------------------------------


def api_key(key_id: str) -> str:
    """A Hash per API key: `digest` (sha256 of the secret), `name`, `created` (unix time). Never the secret."""
    return f"hw:apikey:{key_id}"


# A Set of every API key id, for listing them.
API_KEYS = "hw:apikeys"


def openai_owner(session_id: str) -> str:
    """The id of the API key that created the session (named after it: erased with it, rule 1)."""
    return f"hw:oai:owner:{session_tag(session_id)}"


def openai_history(session_id: str) -> str:
    """The digest of the session's message history as the API last returned it (rule 1)."""
    return f"hw:oai:history:{session_tag(session_id)}"


def openai_conversation(key_id: str, history_digest: str) -> str:
    """One API key's index from a message history's digest to the session that holds it. Named in the session's
    registry (rule 2), so the session's erase removes it."""
    return f"hw:oai:conv:{key_id}:{history_digest}"
