"""Settings as JSON objects (WebSocket and REST) and as `tracker.v1.Settings` messages.

The names and spellings are the proto's; the tracker validates values and ranges. Here only the shape is checked:
unknown names and wrong JSON types are refused before anything is sent on.
"""

from __future__ import annotations

from typing import Any

from haloweave.tracker.v1 import tracker_pb2

from services.common.errors import InvalidArgument

# name → accepted JSON type(s). bool is an int subclass in Python, so it is refused explicitly for numbers.
_FIELDS: dict[str, tuple[type, ...]] = {
    "aggregation": (str,),
    "distance_mode": (str,),
    "min_distance": (int,),
    "distance_scale": (int, float),
    "decay_mode": (str,),
    "decay_rate": (int, float),
    "boost": (int, float),
    "initial_score": (int, float),
    "max_context_tokens": (int,),
    "prune_mode": (str,),
    "prune_policy": (str,),
    "recall": (bool,),
    "recall_max_sentences": (int,),
    "max_new_tokens": (int,),
    "temperature": (int, float),
    "top_p": (int, float),
    "seed": (int,),
    "stop": (list,),
    "clear_stop": (bool,),
}
FIELD_NAMES = tuple(_FIELDS)
_INT32 = 2**31


def _has_type(value: Any, kinds: tuple[type, ...]) -> bool:
    if isinstance(value, bool) and bool not in kinds:
        return False
    return isinstance(value, kinds)


def to_pb(settings: Any) -> tracker_pb2.Settings:
    if not isinstance(settings, dict):
        raise InvalidArgument("settings must be a JSON object")
    message = tracker_pb2.Settings()
    value: Any
    for name, value in settings.items():
        kinds = _FIELDS.get(name)
        if kinds is None:
            raise InvalidArgument(f"unknown setting {name!r}; known: {', '.join(FIELD_NAMES)}")
        if not _has_type(value, kinds):
            raise InvalidArgument(f"setting {name!r} must be of type {'/'.join(k.__name__ for k in kinds)}")
        if name == "stop":
            if not all(isinstance(s, str) and s for s in value):
                raise InvalidArgument("setting 'stop' must be a list of non-empty strings")
            _set(message, name, value)
            if not value:
                message.clear_stop = True  # an empty list means "no stop strings", not "unchanged"
            continue
        if kinds == (int,) and name != "seed" and not -_INT32 <= value < _INT32:
            raise InvalidArgument(f"setting {name!r} is out of range")
        if name == "seed" and not -(2**63) <= value < 2**63:
            raise InvalidArgument("setting 'seed' is out of range")
        if float in kinds and not isinstance(value, float):
            try:
                value = float(value)
            except OverflowError:  # an integer beyond any double (JSON integers have no bound)
                raise InvalidArgument(f"setting {name!r} is out of range") from None
        _set(message, name, value)
    return message


def _set(message: tracker_pb2.Settings, name: str, value: Any) -> None:
    """Sets one field; a string protobuf cannot encode (a lone surrogate, which JSON can escape) is refused."""
    try:
        if name == "stop":
            message.stop.extend(value)
        else:
            setattr(message, name, value)
    except UnicodeEncodeError:
        raise InvalidArgument(f"setting {name!r} is not valid Unicode (a lone surrogate)") from None


def from_pb(message: tracker_pb2.Settings) -> dict[str, Any]:
    """Every field that is set, as plain JSON values (the effective settings have them all)."""
    out: dict[str, Any] = {}
    for name in FIELD_NAMES:
        if name == "clear_stop":
            continue
        if name == "stop":
            out["stop"] = list(message.stop)
        elif message.HasField(name):  # type: ignore[arg-type]
            out[name] = getattr(message, name)
    return out
