"""The REST answers as the OpenAPI schema describes them (docs/websocket.md "REST").

These models document what the routes return; the routes build plain JSON (the dictionary of a long session is large,
and validating every entry on the way out would only repeat what the tracker guarantees). The schema fuzz tests
(tests/fuzz) check every answer against them.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from services.common import session_settings


class ErrorBody(BaseModel):
    """Every refusal: a stable code (docs/websocket.md "Error codes") and a message for people."""

    code: str = Field(description="bad_frame, unauthorized, unknown_session, invalid_settings, busy, unavailable, ...")
    message: str


# Both come from the one settings schema (services/common/session_settings.py): the effective settings of a session
# (every setting; docs/websocket.md "Settings"), and an update (any subset of them).
Settings = session_settings.SessionSettings
SettingsChange = session_settings.SettingsChange


class TokenEntry(BaseModel):
    position: int
    token: str
    token_id: int
    attention_score: float
    turn_id: int
    sentence_id: int
    role: str = Field(description="system | user | assistant")
    deleted: bool


class Export(BaseModel):
    session_id: str
    model: str
    tokenizer_fingerprint: str
    next_position: int
    settings: Settings
    tokens: list[TokenEntry] = Field(description="every dictionary entry, deleted ones included, by position")


class SnapshotInfo(BaseModel):
    snapshot_id: str
    tokens: int
    bytes: int
    model: str
    dtype: str
    created_at: str = Field(description="RFC 3339")


class SnapshotList(BaseModel):
    snapshots: list[SnapshotInfo] = Field(description="newest first")


class SnapshotTaken(BaseModel):
    model_config = ConfigDict(extra="allow")

    job_id: str
    snapshot_id: str
    tokens: int
    bytes: int
    event_id: int


class SnapshotRestored(BaseModel):
    model_config = ConfigDict(extra="allow")

    job_id: str
    snapshot_id: str
    active_tokens: int
    event_id: int


class WorkerErased(BaseModel):
    worker_id: str
    cached: bool = Field(description="the worker held the session's KV cache")
    kv_bytes: int
    cold_bytes: int = Field(description="the cold tier (pruned keys and values kept for recall)")
    waited: bool = Field(description="a job of the session was running there (its reply cancelled); it ended first")


class SessionErased(BaseModel):
    """What DELETE /v1/sessions/{id} erased."""

    session_id: str
    snapshots: list[str] = Field(description="ids of the snapshots deleted from the store (offloaded caches included)")
    workers: list[WorkerErased] = Field(description="every live worker, and what it held")
    jobs: int = Field(description="entries of the session's jobs removed from the job Streams")
    redis_keys: int = Field(description="Redis keys removed (dictionary, events, settings, token, records, indexes)")


class Health(BaseModel):
    status: str


class Ready(BaseModel):
    ready: bool
    checks: dict[str, bool] = Field(description="redis, tracker, snapshot, inference: whether each answers")


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The `responses` of a route: each status it may refuse with, all with the `{code, message}` body."""
    meaning = {
        400: "Malformed input (`bad_frame`, `invalid_settings`)",
        401: "Missing or wrong session token (`unauthorized`)",
        404: "Unknown session or snapshot (`unknown_session`, `not_found`)",
        409: "The session is busy (`busy`)",
        422: "The worker refused the job (its code)",
        502: "A peer failed in an unexpected way",
        503: "Redis or a peer did not answer (`unavailable`); retry",
        504: "No answer from a worker in time (`timeout`)",
    }
    return {status: {"model": ErrorBody, "description": meaning[status]} for status in statuses}
