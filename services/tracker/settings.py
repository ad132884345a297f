"""Per-session settings: defaults, validation and partial updates.

Pure data: no Redis, no grpc. Every change goes through `Settings.updated`, which validates the merged result, so a
session can never hold an invalid combination. Errors name the offending field.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any

from services.common.errors import InvalidArgument

AGGREGATIONS = ("mean", "max", "last_layer", "weighted_layers", "full")
DISTANCE_MODES = ("none", "threshold", "linear", "square_root", "logarithmic")
DECAY_MODES = ("additive", "exponential", "none")
PRUNE_MODES = ("in_place", "reprefill")
PRUNE_POLICIES = ("brightness", "recency", "random", "h2o", "tova")  # services/tracker/policies.py

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


@dataclass(frozen=True, slots=True)
class Settings:
    """The defaults follow the original tool's tested values (DESIGN.md section 3)."""

    aggregation: str = "mean"
    distance_mode: str = "logarithmic"
    min_distance: int = 20
    distance_scale: float = 10.0
    decay_mode: str = "additive"
    decay_rate: float = 0.003
    boost: float = 1.0
    # New tokens start dark and brighten only when attended to.
    initial_score: float = 0.0
    # 0 disables pruning: a session keeps everything until a budget is set.
    max_context_tokens: int = 0
    prune_mode: str = "in_place"
    prune_policy: str = "brightness"
    # Off by default: the original tool never brought pruned tokens back, and the cold tier costs worker memory.
    recall: bool = False
    recall_max_sentences: int = 4
    max_new_tokens: int = 128
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    stop: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        validate(self)

    def updated(self, changes: dict[str, Any]) -> Settings:
        """A copy with `changes` applied (unknown names are refused); validated as a whole."""
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise InvalidArgument(f"unknown settings field(s): {', '.join(sorted(unknown))}")
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["stop"] = list(self.stop)
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"))

    @classmethod
    def from_json(cls, raw: str | bytes) -> Settings:
        data = json.loads(raw)
        data["stop"] = tuple(data.get("stop", ()))
        return cls(**data)


def _choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise InvalidArgument(f"settings.{name}: {value!r} is not one of {', '.join(allowed)}")


def _finite(
    name: str, value: float, low: float | None = None, high: float | None = None, open_low: bool = False
) -> None:
    if not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidArgument(f"settings.{name}: {value!r} is not a finite number")
    if low is not None and (value < low or (open_low and value == low)):
        bound = ">" if open_low else ">="
        raise InvalidArgument(f"settings.{name}: {value!r} must be {bound} {low}")
    if high is not None and value > high:
        raise InvalidArgument(f"settings.{name}: {value!r} must be <= {high}")


def validate(s: Settings) -> None:
    _choice("aggregation", s.aggregation, AGGREGATIONS)
    _choice("distance_mode", s.distance_mode, DISTANCE_MODES)
    _choice("decay_mode", s.decay_mode, DECAY_MODES)
    _choice("prune_mode", s.prune_mode, PRUNE_MODES)
    _choice("prune_policy", s.prune_policy, PRUNE_POLICIES)
    if not isinstance(s.min_distance, int) or s.min_distance < 0:
        raise InvalidArgument(f"settings.min_distance: {s.min_distance!r} must be an integer >= 0")
    _finite("distance_scale", s.distance_scale, MIN_DISTANCE_SCALE)
    # Exponential decay multiplies by (1 - r): r above 1 would flip signs.
    _finite("decay_rate", s.decay_rate, 0.0, 1.0 if s.decay_mode == "exponential" else None)
    _finite("boost", s.boost, 0.0, MAX_BOOST)
    _finite("initial_score", s.initial_score, 0.0, MAX_INITIAL_SCORE)
    if not isinstance(s.max_context_tokens, int) or s.max_context_tokens < 0:
        raise InvalidArgument(f"settings.max_context_tokens: {s.max_context_tokens!r} must be an integer >= 0")
    if not isinstance(s.recall, bool):
        raise InvalidArgument(f"settings.recall: {s.recall!r} must be true or false")
    if not isinstance(s.recall_max_sentences, int) or not 0 < s.recall_max_sentences <= MAX_RECALL_SENTENCES:
        raise InvalidArgument(
            f"settings.recall_max_sentences: {s.recall_max_sentences!r} must be in 1..{MAX_RECALL_SENTENCES}"
        )
    if not isinstance(s.max_new_tokens, int) or not 0 < s.max_new_tokens <= MAX_NEW_TOKENS_LIMIT:
        raise InvalidArgument(f"settings.max_new_tokens: {s.max_new_tokens!r} must be in 1..{MAX_NEW_TOKENS_LIMIT}")
    _finite("temperature", s.temperature, 0.0)
    _finite("top_p", s.top_p, 0.0, 1.0, open_low=True)
    if not isinstance(s.seed, int):
        raise InvalidArgument(f"settings.seed: {s.seed!r} must be an integer")
    if len(s.stop) > MAX_STOP_STRINGS:
        raise InvalidArgument(f"settings.stop: at most {MAX_STOP_STRINGS} stop strings")
    for item in s.stop:
        if not isinstance(item, str) or not item or len(item) > MAX_STOP_LENGTH:
            raise InvalidArgument(f"settings.stop: {item!r} must be a non-empty string of at most {MAX_STOP_LENGTH}")
