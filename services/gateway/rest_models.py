"""The REST answers as the OpenAPI schema describes them (docs/websocket.md "REST").

These models document what the routes return; the routes build plain JSON (the dictionary of a long session is large,
and validating every entry on the way out would only repeat what the tracker guarantees). The schema fuzz tests
(tests/fuzz) check every answer against them.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import SkipJsonSchema

INT32_MAX = 2**31 - 1
StopString = Annotated[str, Field(min_length=1, max_length=256)]
Unset = SkipJsonSchema[None]  # optional, but null is no value to send


class ErrorBody(BaseModel):
    """Every refusal: a stable code (docs/websocket.md "Error codes") and a message for people."""

    code: str = Field(description="bad_frame, unauthorized, unknown_session, invalid_settings, busy, unavailable, ...")
    message: str


class Settings(BaseModel):
    """The effective settings of a session (docs/websocket.md "Settings"); clients ignore names they do not know."""

    model_config = ConfigDict(extra="allow")

    aggregation: str = Field(description="mean | max | last_layer | weighted_layers | full")
    distance_mode: str = Field(description="none | threshold | linear | square_root | logarithmic")
    min_distance: int = Field(ge=0)
    distance_scale: float = Field(gt=0)  # the response says what is, not what may be set
    decay_mode: str = Field(description="additive | exponential | none")
    decay_rate: float = Field(ge=0)
    boost: float = Field(ge=0)
    initial_score: float = Field(ge=0)
    max_context_tokens: int = Field(ge=0, description="0 disables pruning")
    prune_mode: str = Field(description="in_place | reprefill")
    prune_policy: str = Field(description="brightness | recency | random | h2o | tova")
    recall: bool
    recall_max_sentences: int = Field(ge=1, le=64)
    max_new_tokens: int = Field(gt=0)
    temperature: float = Field(ge=0, description="0 is greedy")
    top_p: float = Field(gt=0, le=1)
    seed: int
    stop: list[str]


class SettingsChange(BaseModel):
    """A settings update: any subset of the settings. Unknown names and wrong JSON types are refused
    (`400 invalid_settings`), as are bad values and combinations, and then nothing changes. (The fields default to None
    only to be optional: null is not a value, and the schema does not offer it.)"""

    model_config = ConfigDict(extra="forbid")

    aggregation: Literal["mean", "max", "last_layer", "weighted_layers", "full"] | Unset = None
    distance_mode: Literal["none", "threshold", "linear", "square_root", "logarithmic"] | Unset = None
    min_distance: Annotated[int, Field(ge=0, le=INT32_MAX)] | Unset = None
    distance_scale: Annotated[float, Field(ge=1e-6)] | Unset = None
    decay_mode: Literal["additive", "exponential", "none"] | Unset = None
    decay_rate: Annotated[float, Field(ge=0, description="at most 1 with exponential decay")] | Unset = None
    boost: Annotated[float, Field(ge=0, le=1e6)] | Unset = None
    initial_score: Annotated[float, Field(ge=0, le=1e6)] | Unset = None
    max_context_tokens: (
        Annotated[int, Field(ge=0, le=INT32_MAX, description="0 disables pruning; else at least the protected tokens")]
        | Unset
    ) = None
    prune_mode: Literal["in_place", "reprefill"] | Unset = None
    prune_policy: Literal["brightness", "recency", "random", "h2o", "tova"] | Unset = None
    recall: bool | Unset = None
    recall_max_sentences: Annotated[int, Field(ge=1, le=64)] | Unset = None
    max_new_tokens: Annotated[int, Field(gt=0, le=8192)] | Unset = None
    temperature: Annotated[float, Field(ge=0)] | Unset = None
    top_p: Annotated[float, Field(gt=0, le=1)] | Unset = None
    seed: Annotated[int, Field(ge=-(2**63), le=2**63 - 1)] | Unset = None
    stop: (
        Annotated[list[StopString], Field(max_length=16, description="replaces the stop strings; [] clears them")]
        | Unset
    ) = None
    clear_stop: Annotated[bool, Field(description="true clears the stop strings")] | Unset = None


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
