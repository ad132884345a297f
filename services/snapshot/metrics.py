"""Prometheus metrics of the snapshot service (names per docs/architecture.md; no session ids in labels)."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

BYTES = Counter("haloweave_snapshot_bytes", "Tensor bytes saved or loaded", ["op"])
FAILURES = Counter("haloweave_snapshot_failures", "Snapshot requests that failed", ["op"])
DURATION = Histogram(
    "haloweave_snapshot_duration_seconds",
    "Time to serve a snapshot request, end to end",
    ["op", "backend"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
)
