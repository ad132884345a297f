"""Sentence segmentation of token pieces: a sentence ends at a token containing `.`, `!`, `?` or a newline.

Works token by token so that generated tokens are segmented as they arrive; the template header
(`<|im_start|>role\\n`) therefore closes its own sentence.
"""

from __future__ import annotations

from collections.abc import Iterable

TERMINATORS = frozenset(".!?\n")


def closes_sentence(piece: str) -> bool:
    return any(ch in TERMINATORS for ch in piece)


def next_sentence_id(previous_id: int | None, previous_closed: bool) -> int:
    """The sentence of a token that follows one (within the same message); None starts the message at 0."""
    if previous_id is None:
        return 0
    return previous_id + 1 if previous_closed else previous_id


def sentence_ids(pieces: Iterable[str], start_id: int | None = None, start_closed: bool = False) -> list[int]:
    """Sentence ids for consecutive pieces of one message, continuing after (start_id, start_closed)."""
    ids: list[int] = []
    current, closed = start_id, start_closed
    for piece in pieces:
        current = next_sentence_id(current, closed)
        ids.append(current)
        closed = closes_sentence(piece)
    return ids
