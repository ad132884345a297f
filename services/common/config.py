"""Reading a service's settings from the environment, at start-up (never at import time).

Each service declares its settings as an `EnvSettings` model (pydantic-settings): one field per variable, named by its
`validation_alias` (the variable itself, e.g. `HALOWEAVE_GATEWAY_PORT`), with a description and bounds. The models are
the one source of truth for names, types, defaults and descriptions: `devstack.env_table` renders them as the table
in docs/configuration.md. An empty variable counts as unset. A bad or missing value stops the service at once with a
`ConfigError` that names the variable; a secret's value is never repeated in it.

Peers are given as `HALOWEAVE_<PEER>_ADDR`; a missing required one says which variable to set.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, ValidationError
from pydantic_core import ErrorDetails
from pydantic_settings import BaseSettings, SettingsConfigDict


class ConfigError(SystemExit):
    def __init__(self, message: str) -> None:
        super().__init__(f"configuration error: {message}")


class EnvSettings(BaseSettings):
    """Settings read from the environment when constructed; keyword arguments (by field name) take precedence."""

    model_config = SettingsConfigDict(
        case_sensitive=True,  # the variables are spelled exactly as documented
        env_ignore_empty=True,  # a variable set to "" means "use the default", as it always has
        frozen=True,
        extra="forbid",
        validate_by_name=True,
        validate_by_alias=True,
        allow_inf_nan=False,  # "nan" or "inf" is never a sensible time-out or size
        hide_input_in_errors=True,
    )

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as error:
            raise ConfigError("; ".join(describe(type(self), detail) for detail in error.errors())) from None


# The peers, described once for every service that needs them.
PEERS = {
    "HALOWEAVE_REDIS_URL": "Redis, as `redis://[:password@]host:port/db`.",
    "HALOWEAVE_TRACKER_ADDR": "The tracker's gRPC address, `host:port`.",
    "HALOWEAVE_SNAPSHOT_ADDR": "The snapshot service's gRPC address, `host:port`.",
    "HALOWEAVE_INFERENCE_ADDR": "The inference service's gRPC address (status and health), `host:port`.",
}


def peer(variable: str) -> Any:
    """A required peer address or URL: missing or empty, the service does not start."""
    return Field(validation_alias=variable, min_length=1, description=PEERS[variable], json_schema_extra={"peer": True})


def secret(variable: str, description: str, *, default: Any, shown_default: str | None = None) -> Any:
    """A setting whose value must never be printed: not in the model's repr, not in an error message."""
    extra: dict[str, Any] = {"secret": True}
    if shown_default is not None:
        extra["shown_default"] = shown_default
    return Field(
        default=default, validation_alias=variable, repr=False, description=description, json_schema_extra=extra
    )


def variable_of(model: type[BaseSettings], field_name: str) -> str:
    alias = model.model_fields[field_name].validation_alias
    return alias if isinstance(alias, str) else field_name


def _field_name(model: type[BaseSettings], loc: str) -> str | None:
    if loc in model.model_fields:
        return loc
    return next((name for name, info in model.model_fields.items() if info.validation_alias == loc), None)


def _extra(model: type[BaseSettings], field_name: str | None) -> dict[str, Any]:
    if field_name is None:
        return {}
    extra = model.model_fields[field_name].json_schema_extra
    return extra if isinstance(extra, dict) else {}


def describe(model: type[BaseSettings], detail: ErrorDetails) -> str:
    """One error as the operator should read it: the variable, what was given (unless secret), what is expected."""
    loc = detail["loc"]
    if not loc:  # a check across fields: its message names the variables itself
        return str(detail.get("ctx", {}).get("error", detail["msg"]))
    field_name = _field_name(model, str(loc[0]))
    name = variable_of(model, field_name) if field_name else str(loc[0])
    extra = _extra(model, field_name)
    kind, ctx, given = detail["type"], detail.get("ctx", {}), detail.get("input")
    if kind == "missing" or (kind == "string_too_short" and extra.get("peer")):
        return f"{name} is not set" + (" (it names a peer this service needs)" if extra.get("peer") else "")
    shown = name if extra.get("secret") else f"{name}={given!r}"
    if kind in ("int_parsing", "int_from_float", "int_type"):
        return f"{shown} is not an integer"
    if kind in ("float_parsing", "float_type", "finite_number"):
        return f"{shown} is not a number"
    if kind == "greater_than":
        return f"{shown} must be greater than {ctx['gt']}"
    if kind == "greater_than_equal":
        return f"{shown} must be at least {ctx['ge']}"
    if kind == "less_than_equal":
        return f"{shown} must be at most {ctx['le']}"
    if kind == "literal_error":
        return f"{shown} is not one of {ctx['expected']}"
    if kind == "string_too_short":
        return f"{shown} must not be empty"
    if kind == "string_pattern_mismatch":
        return f"{shown} does not match {ctx['pattern']}"
    if kind == "value_error":
        return f"{name}: {ctx['error']}"
    return f"{shown}: {detail['msg']}"
