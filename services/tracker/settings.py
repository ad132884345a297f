"""The tracker's view of the per-session settings: the one schema, services/common/session_settings.py.

A session's settings are a frozen `SessionSettings`; every change goes through `Settings.updated`, which validates the
merged result, so a session can never hold an invalid combination. Errors name the offending field.
"""

from __future__ import annotations

from services.common.session_settings import (
    AGGREGATIONS,
    DECAY_MODES,
    DISTANCE_MODES,
    MAX_BOOST,
    MAX_INITIAL_SCORE,
    MAX_NEW_TOKENS_LIMIT,
    MAX_RECALL_SENTENCES,
    MAX_STOP_LENGTH,
    MAX_STOP_STRINGS,
    MIN_DISTANCE_SCALE,
    PRUNE_MODES,
    PRUNE_POLICIES,
)
from services.common.session_settings import SessionSettings as Settings

__all__ = [
    "AGGREGATIONS",
    "DECAY_MODES",
    "DISTANCE_MODES",
    "MAX_BOOST",
    "MAX_INITIAL_SCORE",
    "MAX_NEW_TOKENS_LIMIT",
    "MAX_RECALL_SENTENCES",
    "MAX_STOP_LENGTH",
    "MAX_STOP_STRINGS",
    "MIN_DISTANCE_SCALE",
    "PRUNE_MODES",
    "PRUNE_POLICIES",
    "Settings",
]
