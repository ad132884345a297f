"""Summaries of latency samples."""

from __future__ import annotations

import numpy as np


def summary(samples: list[float]) -> dict[str, float]:
    values = np.asarray(samples)
    return {
        "n": len(samples),
        "mean_us": float(values.mean() * 1e6),
        "p50_us": float(np.percentile(values, 50) * 1e6),
        "p99_us": float(np.percentile(values, 99) * 1e6),
    }
