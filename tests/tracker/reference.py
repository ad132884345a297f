"""A plain reference of DESIGN.md section 3, written with loops and no numpy, to test the fast code against."""

from __future__ import annotations

import math
from dataclasses import dataclass


def weight(d: int, mode: str, m: int, s: float) -> float:
    if mode == "none":
        return 1.0
    if d < m:
        return 0.0
    x = (d - m) / s
    if mode == "threshold":
        return 1.0
    if mode == "linear":
        return 1.0 + x
    if mode == "square_root":
        return 1.0 + math.sqrt(x)
    if mode == "logarithmic":
        return 1.0 + math.log(1.0 + x)
    raise ValueError(mode)


def update(score: float, a: float, w: float, boost: float, rate: float, mode: str) -> float:
    if mode == "additive":
        return max(0.0, score + boost * w * a - rate)
    if mode == "exponential":
        return score * (1.0 - rate) + boost * w * a
    return score + boost * w * a


@dataclass
class Token:
    position: int
    turn: int
    sentence: int
    role: str
    score: float
    deleted: bool = False


def step(tokens: list[Token], attention: list[float], settings: dict) -> None:
    active = [t for t in tokens if not t.deleted]
    assert len(active) == len(attention)
    query = active[-1].position
    for token, a in zip(active, attention, strict=True):
        d = query - token.position
        w = weight(d, settings["distance_mode"], settings["min_distance"], settings["distance_scale"])
        token.score = update(token.score, a, w, settings["boost"], settings["decay_rate"], settings["decay_mode"])


def prune(tokens: list[Token], budget: int, protected_turns: set[int]) -> list[tuple[int, int]]:
    """Greedy, one sentence at a time: lowest maximum score, ties to the oldest. Returns (turn, sentence) pruned."""
    pruned: list[tuple[int, int]] = []
    while budget > 0:
        active = [t for t in tokens if not t.deleted]
        if len(active) <= budget:
            break
        best: tuple[float, int, int] | None = None  # (max score, first position, index of first token)
        sentences: dict[tuple[int, int], list[Token]] = {}
        for t in active:
            if t.role == "system" or t.turn in protected_turns:
                continue
            sentences.setdefault((t.turn, t.sentence), []).append(t)
        if not sentences:
            break
        choice = None
        for key, members in sentences.items():
            top = max(m.score for m in members)
            candidate = (top, members[0].position, 0)
            if best is None or candidate < best:
                best, choice = candidate, key
        assert choice is not None
        for t in sentences[choice]:
            t.deleted = True
        pruned.append(choice)
    return pruned


def aggregate(tensor: list[list[list[float]]], mode: str) -> list[float]:
    layers, heads, ctx = len(tensor), len(tensor[0]), len(tensor[0][0])
    out = []
    for i in range(ctx):
        if mode in ("mean", "full"):
            out.append(sum(tensor[k][h][i] for k in range(layers) for h in range(heads)) / (layers * heads))
        elif mode == "max":
            out.append(max(tensor[k][h][i] for k in range(layers) for h in range(heads)))
        elif mode == "last_layer":
            out.append(sum(tensor[layers - 1][h][i] for h in range(heads)) / heads)
        else:  # weighted_layers
            total = sum(k + 1 for k in range(layers))
            out.append(sum((k + 1) / total * sum(tensor[k][h][i] for h in range(heads)) / heads for k in range(layers)))
    return out
