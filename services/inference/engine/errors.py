"""The engine's one error type for bad input.

It is both a `ValueError` (what callers of a numeric library expect) and the common `InvalidArgument` (so a servicer
maps it to INVALID_ARGUMENT without knowing the engine). Raised before any state changes: bad input loses nothing.
"""

from __future__ import annotations

from services.common.errors import InvalidArgument


class EngineInputError(InvalidArgument, ValueError):
    """A request the engine refuses: wrong positions, unknown tokens, a cache that does not fit this model."""
