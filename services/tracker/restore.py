"""Checking an exported dictionary and rebuilding the session arrays from it (snapshot restore)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from services.common.errors import InvalidArgument
from services.tracker import segmentation
from services.tracker.state import ROLE_CODES

# Bounds that leave a restored session room to go on: positions are int64 and grow by one per token, turn and sentence
# ids are int32 and grow by one per message and sentence. A dictionary at the edge of either would overflow (and the
# session refuse every message) at its next token.
MAX_POSITION = 2**62
MAX_ID = 2**30


@dataclass(frozen=True, slots=True)
class ExportedToken:
    token: str
    token_id: int
    position: int
    attention_score: float
    turn_id: int
    sentence_id: int
    role: str
    deleted: bool


def check_next_position(next_position: int) -> None:
    if not 0 <= next_position <= MAX_POSITION:
        raise InvalidArgument(f"state.next_position {next_position} is outside 0..{MAX_POSITION}")


def columns(tokens: list[ExportedToken], vocab_size: int) -> tuple[dict[str, Any], list[str]]:
    """Checks an exported dictionary and rebuilds its arrays; refuses anything that would break an invariant."""
    previous_position = -1
    previous_turn = -1
    for i, token in enumerate(tokens):
        if token.position <= previous_position:
            raise InvalidArgument(f"state.tokens[{i}]: positions must be unique and increasing")
        if token.position >= MAX_POSITION:
            raise InvalidArgument(f"state.tokens[{i}]: position {token.position} is not below {MAX_POSITION}")
        if token.turn_id < previous_turn or token.turn_id < 0 or token.sentence_id < 0:
            raise InvalidArgument(f"state.tokens[{i}]: turn and sentence ids must be non-negative, turns in order")
        if token.turn_id >= MAX_ID or token.sentence_id >= MAX_ID:
            raise InvalidArgument(f"state.tokens[{i}]: turn and sentence ids must be below {MAX_ID}")
        if token.role not in ROLE_CODES:
            raise InvalidArgument(f"state.tokens[{i}]: unknown role {token.role!r}")
        if not 0 <= token.token_id < vocab_size:
            raise InvalidArgument(f"state.tokens[{i}]: token_id {token.token_id} is outside the vocabulary")
        if not math.isfinite(token.attention_score) or token.attention_score < 0:
            raise InvalidArgument(f"state.tokens[{i}]: attention_score must be finite and >= 0")
        previous_position, previous_turn = token.position, token.turn_id
    pairs = [(t.turn_id, t.sentence_id) for t in tokens]
    new_sentence = [i == 0 or pairs[i] != pairs[i - 1] for i in range(len(pairs))]
    scores = [t.attention_score for t in tokens]
    columns: dict[str, Any] = {
        "pos": np.asarray([t.position for t in tokens], dtype=np.int64),
        "tid": np.asarray([t.token_id for t in tokens]),
        "turn": np.asarray([t.turn_id for t in tokens], dtype=np.int64),
        "sent": np.asarray([t.sentence_id for t in tokens]),
        "gsent": np.cumsum(np.asarray(new_sentence, dtype=np.int64)) - 1,
        "role": np.asarray([ROLE_CODES[t.role] for t in tokens], dtype=np.int64),
        "closes": np.asarray([segmentation.closes_sentence(t.token) for t in tokens]),
        "deleted": np.asarray([t.deleted for t in tokens]),
        "score": np.asarray(scores, dtype=np.float64),
    }
    return columns, [t.token for t in tokens]
