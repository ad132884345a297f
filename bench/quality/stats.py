"""Summaries of the per-conversation records: means with 95% bootstrap intervals, the NLL gap closed, and paired
comparisons of brightness against every other policy and of each policy with recall on against the same policy with
it off (resampling conversations, so pairs stay pairs)."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np

RESAMPLES = 2000
BASELINES = ("none", "fact_removed")


def _interval(samples: np.ndarray) -> list[float]:
    low, high = np.percentile(samples, [2.5, 97.5])
    return [float(low), float(high)]


def _resample(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.integers(0, n, size=(RESAMPLES, n))


def mean_ci(values: np.ndarray, rng: np.random.Generator) -> dict[str, Any]:
    draws = values[_resample(rng, len(values))].mean(axis=1)
    return {"mean": float(values.mean()), "ci": _interval(draws)}


def gap_closed(removed: np.ndarray, policy: np.ndarray, full: np.ndarray, rng: np.random.Generator) -> dict[str, Any]:
    """(NLL fact removed − NLL policy) ÷ (NLL fact removed − NLL no pruning), as a ratio of means over the
    conversations (a per-conversation ratio explodes where the fact barely matters); the interval resamples
    conversations."""
    index = _resample(rng, len(policy))
    gained = (removed - policy)[index].mean(axis=1)
    possible = (removed - full)[index].mean(axis=1)
    denominator = float((removed - full).mean())
    value = float((removed - policy).mean() / denominator) if denominator > 0 else float("nan")
    with np.errstate(divide="ignore", invalid="ignore"):
        draws = np.where(possible > 0, gained / possible, np.nan)
    draws = draws[np.isfinite(draws)]
    return {"mean": value, "ci": _interval(draws) if draws.size else [float("nan")] * 2}


def paired(a: np.ndarray, b: np.ndarray, rng: np.random.Generator) -> dict[str, Any]:
    """b − a per conversation (NLL: positive means a is better), its mean with an interval, and how often each
    side is strictly better."""
    difference = b - a
    out = mean_ci(difference, rng)
    out.update(a_better=int((difference > 0).sum()), b_better=int((difference < 0).sum()), n=len(difference))
    return out


def summarise(records: list[dict[str, Any]], reference: str = "brightness", seed: int = 0) -> list[dict[str, Any]]:
    """One row per (task, policy, budget), each with kept rate, accuracy, NLL and gap closed, and the paired NLL
    difference against `reference` at the same budget."""
    rng = np.random.default_rng(seed)
    by_conversation: dict[tuple[str, int], dict[tuple[str, float], dict[str, Any]]] = defaultdict(dict)
    for r in records:
        by_conversation[(r["task"], r["index"])][(r["policy"], r["budget"])] = r
    groups: dict[tuple[str, str, float], list[tuple[str, int]]] = defaultdict(list)
    for (task, index), variants in sorted(by_conversation.items()):
        for policy, budget in variants:
            groups[(task, policy, budget)].append((task, index))
    rows = []
    for (task, policy, budget), conversations in sorted(groups.items(), key=_order):

        def column(name: str, which: tuple[str, float], convs: list[tuple[str, int]] = conversations) -> np.ndarray:
            return np.array([float(by_conversation[c][which][name]) for c in convs])

        mine = (policy, budget)
        nll = column("nll", mine)
        row: dict[str, Any] = {
            "task": task,
            "policy": policy,
            "budget": budget,
            "n": len(conversations),
            "kept": mean_ci(column("kept", mine), rng),
            "correct": mean_ci(column("correct", mine), rng),
            "nll": mean_ci(nll, rng),
            "active_tokens": float(column("active_tokens", mine).mean()),
        }
        if policy not in BASELINES:
            row["gap_closed"] = gap_closed(column("nll", ("fact_removed", 0.0)), nll, column("nll", ("none", 0.0)), rng)
            if policy != reference and all((reference, budget) in by_conversation[c] for c in conversations):
                row[f"vs_{reference}"] = paired(column("nll", (reference, budget)), nll, rng)
            off = recall_base(policy)
            if off is not None and all((off, budget) in by_conversation[c] for c in conversations):
                row["vs_recall_off"] = paired(column("nll", (off, budget)), nll, rng)
                row["recall_cost"] = _recall_cost([by_conversation[c][mine] for c in conversations])
        rows.append(row)
    return rows


def recall_base(label: str) -> str | None:
    """`h2o` for `h2o:recall=1` (the same policy with recall off); None for a label without recall on."""
    name, _, rest = label.partition(":")
    items = [item for item in rest.split(",") if item]
    others = [item for item in items if item.partition("=")[0] != "recall"]
    if len(others) == len(items) or any(item in ("recall=0", "recall=false") for item in items):
        return None
    return f"{name}:{','.join(others)}" if others else name


def _recall_cost(records: list[dict[str, Any]]) -> dict[str, float]:
    """Per conversation: tokens recalled, seconds of recall per probed user message, cold-tier bytes at the end."""
    probes = sum(int(r.get("probes", 0)) for r in records)
    return {
        "recalled_tokens": float(np.mean([r.get("recalled_tokens", 0) for r in records])),
        "seconds_per_probe": sum(float(r.get("recall_seconds", 0.0)) for r in records) / probes if probes else 0.0,
        "cold_bytes": float(np.mean([r.get("cold_bytes", 0) for r in records])),
    }


def _order(item: tuple[tuple[str, str, float], Any]) -> tuple[str, float, int, str]:
    task, policy, budget = item[0]
    baseline = BASELINES.index(policy) if policy in BASELINES else len(BASELINES)
    return (task, budget if policy not in BASELINES else 2.0, baseline, policy)
