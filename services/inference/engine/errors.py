"""The engine's one error type for bad input.

It is both a `ValueError` (what callers of a numeric library expect) and the common `InvalidArgument` (so a servicer
maps it to INVALID_ARGUMENT without knowing the engine). Raised before any state changes: bad input loses nothing.
"""

from __future__ import annotations

from services.common.errors import InvalidArgument


class EngineInputError(InvalidArgument, ValueError):
    """A request the engine refuses: wrong positions, unknown tokens, a cache that does not fit this model."""


def check_tokens(token_ids: list[int], positions: list[int], after: int, vocab_size: int) -> None:
    """Refuses tokens outside the vocabulary and positions that do not ascend past `after` (the cache's last)."""
    if len(token_ids) != len(positions):
        raise EngineInputError(f"{len(token_ids)} token ids but {len(positions)} positions")
    previous = after
    for p in positions:
        if p <= previous:
            raise EngineInputError(f"positions must ascend past {after}: got {p} after {previous}")
        previous = p
    for t in token_ids:
        if not 0 <= t < vocab_size:
            raise EngineInputError(f"token id {t} is outside the vocabulary [0, {vocab_size})")
