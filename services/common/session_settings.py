"""The per-session settings: one typed schema from which every service and client takes them.

`SessionSettings` names every setting once, with its type, default, bounds, description and where it belongs:
- the tracker holds a session's effective settings as one of these (`updated` validates every change as a whole);
- the gateway validates WebSocket `settings` frames and `PUT /v1/sessions/{id}/settings` with `SettingsChange`, the
  same fields all optional, and documents both in OpenAPI from these models;
- the proto carries settings as one JSON object (`tracker.v1.Settings.json`), so a new setting needs no proto edit;
  each end validates what it receives against this schema;
- the web UI builds its settings form from `json_schema()` (served as `GET /v1/settings/schema`): labels from titles
  and descriptions, inputs from types, bounds and enums, grouped by `x-group`;
- the OpenAI-compatible API maps its request parameters to settings with `openai_parameters()`;
- the inference worker takes the aggregation modes (`Aggregation`) and its sampling fields (`sampling_fields()`).

Adding a setting is adding one field here (and using it where it acts). Errors name the field: `settings.top_p: ...`.
Validation happens when settings change or arrive, never per generated token: a session's settings are parsed once
and shared (the models are frozen).
"""

from __future__ import annotations

import functools
import json
from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, create_model, field_validator
from pydantic.fields import FieldInfo

from services.common.errors import InvalidArgument

Aggregation = Literal["mean", "max", "last_layer", "weighted_layers", "full"]
DistanceMode = Literal["none", "threshold", "linear", "square_root", "logarithmic"]
DecayMode = Literal["additive", "exponential", "none"]
PruneMode = Literal["in_place", "reprefill"]
PrunePolicy = Literal["brightness", "recency", "random", "h2o", "tova"]  # services/tracker/policies.py

AGGREGATIONS: tuple[str, ...] = get_args(Aggregation)
DISTANCE_MODES: tuple[str, ...] = get_args(DistanceMode)
DECAY_MODES: tuple[str, ...] = get_args(DecayMode)
PRUNE_MODES: tuple[str, ...] = get_args(PruneMode)
PRUNE_POLICIES: tuple[str, ...] = get_args(PrunePolicy)

MAX_NEW_TOKENS_LIMIT = 8192
# A score grows by boost * w(d) * attention per step. These bounds keep every score finite whatever the settings
# (boost 1e308 overflowed to inf at the first step, and a distance scale of 5e-324 made w infinite and 0 * w NaN),
# and stay far beyond any useful value (the defaults are 1, 0 and 10).
MAX_BOOST = 1e6
MAX_INITIAL_SCORE = 1e6
MIN_DISTANCE_SCALE = 1e-6
MAX_RECALL_SENTENCES = 64
MAX_STOP_STRINGS = 16
MAX_STOP_LENGTH = 256
INT32_MAX = 2**31 - 1  # positions and token counts: the worker's tensors and the tracker's arrays hold int32 counts
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1  # a seed any torch generator takes

# Names that the update frames accept besides the settings themselves: `clear_stop: true` clears the stop strings
# (as `stop: []` does), kept for clients written before `[]` meant that.
UPDATE_ONLY = ("clear_stop",)


# A strict str also refuses a lone surrogate (which a JSON escape can spell): it is no Unicode.
StopString = Annotated[str, Field(min_length=1, max_length=MAX_STOP_LENGTH, strict=True)]


def _meta(group: str, step: float | None = None, openai: tuple[str, ...] = (), **extra: Any) -> dict[str, Any]:
    """The schema extensions of one field: its form group and input step (the UI), its OpenAI parameter names, and
    `x-ui-max`, a form slider's end where the setting itself has no upper bound."""
    out: dict[str, Any] = {"x-group": group}
    if step is not None:
        out["x-step"] = step
    if openai:
        out["x-openai"] = list(openai)
    out.update({f"x-{key.replace('_', '-')}": value for key, value in extra.items()})
    return out


class SessionSettings(BaseModel):
    """The settings of one session. The defaults follow the original tool's tested values (DESIGN.md section 3)."""

    model_config = ConfigDict(strict=True, frozen=True, extra="forbid", title="Settings")

    max_new_tokens: int = Field(
        128,
        ge=1,
        le=MAX_NEW_TOKENS_LIMIT,
        title="Max new tokens",
        description="At most this many tokens per reply.",
        json_schema_extra=_meta("Generation", 1, ("max_tokens", "max_completion_tokens")),
    )
    temperature: float = Field(
        0.0,
        ge=0,
        allow_inf_nan=False,
        title="Temperature (0 = greedy)",
        description="Sampling temperature; 0 picks the most likely token every time.",
        json_schema_extra=_meta("Generation", 0.05, ("temperature",), ui_max=2),
    )
    top_p: float = Field(
        1.0,
        gt=0,
        le=1,
        allow_inf_nan=False,
        title="Top-p",
        description="Nucleus sampling: sample from the smallest set of tokens whose probability reaches top_p.",
        json_schema_extra=_meta("Generation", 0.01, ("top_p",)),
    )
    seed: int = Field(
        0,
        ge=INT64_MIN,
        le=INT64_MAX,
        title="Seed",
        description="Seed of the sampling generator: the same seed and settings give the same reply.",
        json_schema_extra=_meta("Generation", 1, ("seed",)),
    )
    stop: tuple[StopString, ...] = Field(
        (),
        max_length=MAX_STOP_STRINGS,
        strict=False,  # a JSON list
        title="Stop strings",
        description="The reply ends where its text contains one of these; an update replaces the list, [] clears it.",
        json_schema_extra=_meta("Generation", openai=("stop",)),
    )
    aggregation: Aggregation = Field(
        "mean",
        title="Aggregation",
        description="How a step's attention is reduced over layers and heads to one score per token.",
        json_schema_extra=_meta("Attention"),
    )
    boost: float = Field(
        1.0,
        ge=0,
        le=MAX_BOOST,
        allow_inf_nan=False,
        title="Boost",
        description="A token's score grows by boost x distance weight x attention per step.",
        json_schema_extra=_meta("Attention", 0.1),
    )
    decay_mode: DecayMode = Field(
        "additive",
        title="Decay",
        description="How scores fade per step: minus the rate, times (1 - rate), or not at all.",
        json_schema_extra=_meta("Attention"),
    )
    decay_rate: float = Field(
        0.003,
        ge=0,
        allow_inf_nan=False,
        title="Decay rate",
        description="Per-step decay; at most 1 with exponential decay.",
        json_schema_extra=_meta("Attention", 0.001),
    )
    # New tokens start dark and brighten only when attended to.
    initial_score: float = Field(
        0.0,
        ge=0,
        le=MAX_INITIAL_SCORE,
        allow_inf_nan=False,
        title="Initial score",
        description="The score of a new token.",
        json_schema_extra=_meta("Attention", 0.1),
    )
    distance_mode: DistanceMode = Field(
        "logarithmic",
        title="Mode",
        description="How attention from far away is weighted against attention from nearby.",
        json_schema_extra=_meta("Distance weighting"),
    )
    min_distance: int = Field(
        20,
        ge=0,
        le=INT32_MAX,
        title="Min distance",
        description="Positions closer than this to the newest token get no boost.",
        json_schema_extra=_meta("Distance weighting", 1),
    )
    distance_scale: float = Field(
        10.0,
        ge=MIN_DISTANCE_SCALE,
        allow_inf_nan=False,
        title="Scale",
        description="The distance, in positions, over which the weight grows.",
        json_schema_extra=_meta("Distance weighting", 1),
    )
    # 0 disables pruning: a session keeps everything until a budget is set.
    max_context_tokens: int = Field(
        0,
        ge=0,
        le=INT32_MAX,
        title="Token budget (0 = off)",
        description="Prune the dimmest sentences while the active tokens exceed this; at least the tokens that are "
        "never pruned, or 0 to disable pruning.",
        json_schema_extra=_meta("Pruning", 16),
    )
    prune_policy: PrunePolicy = Field(
        "brightness",
        title="Policy",
        description="Which sentences go first when over budget (docs/scoring.md).",
        json_schema_extra=_meta("Pruning"),
    )
    prune_mode: PruneMode = Field(
        "in_place",
        title="Eviction",
        description="Evict pruned tokens from the KV cache in place, or rebuild the cache from the kept tokens.",
        json_schema_extra=_meta("Pruning"),
    )
    # Off by default: the original tool never brought pruned tokens back, and the cold tier costs worker memory.
    recall: bool = Field(
        False,
        title="Recall pruned sentences",
        description="Pruned sentences may come back when a new user message attends to them (docs/scoring.md).",
        json_schema_extra=_meta("Pruning"),
    )
    recall_max_sentences: int = Field(
        4,
        ge=1,
        le=MAX_RECALL_SENTENCES,
        title="Recall at most (sentences)",
        description="At most this many sentences come back per user message.",
        json_schema_extra=_meta("Pruning", 1),
    )

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as error:
            raise InvalidArgument(describe(error)) from None

    @field_validator("decay_rate")
    @classmethod
    def _decay_rate_with_exponential(cls, value: float, info: ValidationInfo) -> float:
        # Exponential decay multiplies by (1 - r): r above 1 would flip signs.
        if info.data.get("decay_mode") == "exponential" and value > 1:
            raise ValueError("must be <= 1 with exponential decay")
        return value

    def updated(self, changes: dict[str, Any]) -> SessionSettings:
        """A copy with `changes` applied (unknown names are refused); validated as a whole."""
        unknown = set(changes) - set(type(self).model_fields)
        if unknown:
            raise InvalidArgument(f"unknown settings field(s): {', '.join(sorted(unknown))}")
        return type(self)(**{**self.__dict__, **changes})

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON values (the stop strings as a list)."""
        return self.model_dump(mode="json")

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"))

    @classmethod
    def from_json(cls, raw: str | bytes) -> SessionSettings:
        """Parsed and validated once per distinct text: a session's settings are read back at every step."""
        return _from_json(cls, raw if isinstance(raw, str) else raw.decode())


@functools.lru_cache(maxsize=4096)
def _from_json(cls: type[SessionSettings], raw: str) -> SessionSettings:
    data = json.loads(raw)
    if not isinstance(data, dict):
        raise InvalidArgument("settings must be a JSON object")
    return cls(**data)


_BOUNDS = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<", "less_than_equal": "<="}


def describe(error: ValidationError) -> str:
    """A validation error as people read it, naming each field: `settings.top_p: 0.0 must be > 0`."""
    parts = []
    for item in error.errors(include_url=False):
        loc = ".".join(str(part) for part in item["loc"])
        kind, ctx, value = item["type"], item.get("ctx") or {}, _short(item["input"])
        if kind == "extra_forbidden":
            parts.append(f"unknown setting {loc!r}")
        elif kind == "literal_error":
            parts.append(f"settings.{loc}: {value} is not one of {str(ctx['expected']).replace(chr(39), '')}")
        elif kind in _BOUNDS:
            bound = next(iter(ctx.values()))
            parts.append(f"settings.{loc}: {value} must be {_BOUNDS[kind]} {bound}")
        elif kind == "value_error":  # this module's own rules, worded to follow the value
            parts.append(f"settings.{loc}: {value} {item['msg'].removeprefix('Value error, ')}")
        else:
            parts.append(f"settings.{loc}: {value}: {item['msg']}")
    return "; ".join(parts)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:57]}..."


def _schema(model: type[SessionSettings] | None) -> type[SessionSettings]:
    """`model`, or the module's SessionSettings as it is now: a test may put a subclass with one more field there."""
    return model or SessionSettings


def names(model: type[SessionSettings] | None = None) -> tuple[str, ...]:
    return tuple(_schema(model).model_fields)


def _optional(info: FieldInfo) -> tuple[Any, Any]:
    """One setting as an optional field of an update: the same type, bounds and documentation. Its default None is
    only "not given" (defaults are not validated): null is no value to send, so the schema shows no default."""
    annotation = Annotated[(info.annotation, *info.metadata)] if info.metadata else info.annotation
    extra = dict(info.json_schema_extra) if isinstance(info.json_schema_extra, dict) else {}

    def schema_extra(schema: dict[str, Any]) -> None:
        schema.pop("default", None)
        schema.update(extra)

    return annotation, Field(None, title=info.title, description=info.description, json_schema_extra=schema_extra)


def _no_default(schema: dict[str, Any]) -> None:
    schema.pop("default", None)


def change_model(model: type[SessionSettings] | None = None) -> type[BaseModel]:
    """The model of an update of `model`: any subset of its fields, plus `clear_stop`."""
    fields: dict[str, Any] = {name: _optional(info) for name, info in _schema(model).model_fields.items()}
    fields["clear_stop"] = (
        bool,
        Field(None, description="true clears the stop strings (as stop: [] does)", json_schema_extra=_no_default),
    )
    return create_model(
        "SettingsChange",
        __config__=ConfigDict(strict=True, extra="forbid"),
        __doc__="A settings update: any subset of the settings. Unknown names, wrong JSON types and values out of "
        "bounds are refused (`invalid_settings`), as are bad combinations with the session's other settings; then "
        "nothing changes.",
        **fields,
    )


SettingsChange = change_model()


def change(data: Any, model: type[BaseModel] | None = None) -> dict[str, Any]:
    """An update from a client (a JSON object) checked field by field: the given settings as plain values, with
    `clear_stop: true` turned into `stop: []`. Combinations are checked where the update meets the session."""
    if not isinstance(data, dict):
        raise InvalidArgument("settings must be a JSON object")
    nulls = sorted(name for name, value in data.items() if value is None)
    if nulls:
        raise InvalidArgument(f"settings.{nulls[0]}: null is not a value; leave the setting out to keep it")
    try:
        parsed = (model or SettingsChange).model_validate(data)
    except ValidationError as error:
        raise InvalidArgument(describe(error)) from None
    out = parsed.model_dump(mode="json", exclude_unset=True)
    if out.pop("clear_stop", False):
        out["stop"] = []
    return out


def encode_change(changes: dict[str, Any]) -> str:
    """Settings (all or some) as the JSON text the proto carries."""
    return json.dumps(changes, separators=(",", ":"))


def decode_change(raw: str, model: type[BaseModel] | None = None) -> dict[str, Any]:
    """The JSON text of `tracker.v1.Settings.json` back to settings, checked field by field ('' is no change)."""
    if not raw:
        return {}
    try:
        data = json.loads(raw)
    except ValueError:
        raise InvalidArgument("settings: not a JSON object") from None
    return change(data, model)


def json_schema(model: type[SessionSettings] | None = None) -> dict[str, Any]:
    """The JSON schema of the settings, with the defaults and the `x-group`/`x-step`/`x-ui-max`/`x-openai`
    extensions: what the web UI builds its form from."""
    return _schema(model).model_json_schema()


def openai_parameters(model: type[SessionSettings] | None = None) -> dict[str, str]:
    """OpenAI request parameter name → the setting it sets (e.g. max_completion_tokens → max_new_tokens)."""
    out: dict[str, str] = {}
    for name, info in _schema(model).model_fields.items():
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        for parameter in extra.get("x-openai", ()):  # type: ignore[union-attr]
            out[str(parameter)] = name
    return out


def sampling_fields(model: type[SessionSettings] | None = None) -> tuple[str, ...]:
    """The settings the worker's sampler takes (the `Generation` group)."""
    return tuple(
        name
        for name, info in _schema(model).model_fields.items()
        if isinstance(info.json_schema_extra, dict) and info.json_schema_extra.get("x-group") == "Generation"
    )
