"""Worker statistics and their Prometheus rendering, in vLLM's style.

Each worker's hot loop fills a plain `WorkerStats` (counters and fixed-bucket histograms, no Prometheus objects, so it
crosses from a Ray actor to the driver as a small dict). The driver's `StatsCollector` keeps the latest dict of every
worker and renders the sums as `haloweave_inference_*` metrics. A worker restarted by Ray starts from zero under a new
incarnation id; the collector folds the dead incarnation's totals into a carry, so counters never go backwards.

`jobs_total{type,outcome}`: type generate | snapshot | restore; outcome eos | length | stop | cancelled (a reply's
finish reason), ok (snapshot, restore), error (the client got an `error` event), invalid (an unreadable job).
"""

from __future__ import annotations

import bisect
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

PREFIX = "haloweave_inference_"
HISTOGRAMS: dict[str, tuple[tuple[float, ...], str]] = {
    "time_to_first_token_seconds": (
        (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0),
        "Job taken to first token sampled (cache sync and prefill included).",
    ),
    "inter_token_latency_seconds": (
        (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.5),
        "Time between two tokens of one reply (decode and the tracker's step).",
    ),
    "batch_size": (
        (1, 2, 4, 8, 12, 16, 24, 32, 48, 64),
        "Conversations advanced by one forward (decodes and prefill chunks).",
    ),
    "prefill_tokens_per_step": (
        (0, 16, 32, 64, 128, 256, 512, 1024, 2048),
        "Context tokens (prompts, rebuilds) fed in one forward besides the decodes.",
    ),
    "step_seconds": (
        (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.5, 5.0),
        "One step of the batch: forward, the tracker's answers, cache edits.",
    ),
    "queue_wait_seconds": (
        (0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0),
        "Job enqueued to taken by the worker that runs it.",
    ),
}


@dataclass(slots=True)
class Histogram:
    bounds: tuple[float, ...]
    counts: list[int] = field(default_factory=list)
    total: float = 0.0

    def __post_init__(self) -> None:
        if not self.counts:
            self.counts = [0] * (len(self.bounds) + 1)  # the last bucket is +Inf

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value


@dataclass
class WorkerStats:
    worker_id: str
    incarnation: str = field(default_factory=lambda: uuid.uuid4().hex)
    pid: int = field(default_factory=os.getpid)
    histograms: dict[str, Histogram] = field(
        default_factory=lambda: {name: Histogram(bounds) for name, (bounds, _) in HISTOGRAMS.items()}
    )
    generated_tokens: int = 0
    jobs: dict[tuple[str, str], int] = field(default_factory=dict)
    offloads: int = 0
    restores: int = 0
    sessions: int = 0
    kv_bytes: int = 0
    cold_bytes: int = 0  # host bytes of the sessions' cold tiers (pruned KV kept for recall)
    running: int = 0  # conversations in the batch
    waiting: int = 0  # opened replies queued for a place in the batch
    kv_reserved_bytes: int = 0  # KV bytes the running conversations may reach
    kv_budget_bytes: int = 0
    ready: bool = False

    def observe(self, name: str, value: float) -> None:
        self.histograms[name].observe(value)

    def job(self, job_type: str, outcome: str) -> None:
        self.jobs[(job_type, outcome)] = self.jobs.get((job_type, outcome), 0) + 1

    @property
    def jobs_done(self) -> int:
        return sum(self.jobs.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "worker_id": self.worker_id,
            "incarnation": self.incarnation,
            "pid": self.pid,
            "histograms": {n: {"counts": list(h.counts), "sum": h.total} for n, h in self.histograms.items()},
            "generated_tokens": self.generated_tokens,
            "jobs": [[t, o, n] for (t, o), n in self.jobs.items()],
            "offloads": self.offloads,
            "restores": self.restores,
            "sessions": self.sessions,
            "kv_bytes": self.kv_bytes,
            "cold_bytes": self.cold_bytes,
            "running": self.running,
            "waiting": self.waiting,
            "kv_reserved_bytes": self.kv_reserved_bytes,
            "kv_budget_bytes": self.kv_budget_bytes,
            "jobs_done": self.jobs_done,
            "ready": self.ready,
        }


_CUMULATIVE = ("generated_tokens", "offloads", "restores")


def _empty_totals() -> dict[str, Any]:
    return {
        "histograms": {n: {"counts": [0] * (len(b) + 1), "sum": 0.0} for n, (b, _) in HISTOGRAMS.items()},
        "jobs": {},
        **{name: 0 for name in _CUMULATIVE},
    }


def _add(totals: dict[str, Any], snap: dict[str, Any]) -> None:
    for name in _CUMULATIVE:
        totals[name] += snap[name]
    for t, o, n in snap["jobs"]:
        totals["jobs"][(t, o)] = totals["jobs"].get((t, o), 0) + n
    for name, hist in snap["histograms"].items():
        into = totals["histograms"][name]
        into["counts"] = [a + b for a, b in zip(into["counts"], hist["counts"], strict=True)]
        into["sum"] += hist["sum"]


class StatsCollector(Collector):
    """Renders the sum over workers; `update` is fed by the driver's polling of the actors."""

    def __init__(self) -> None:
        self.latest: dict[str, dict[str, Any]] = {}
        self.alive: set[str] = set()
        self.carry = _empty_totals()
        self.stream_lag = 0

    def update(self, worker_id: str, snap: dict[str, Any] | None) -> None:
        """A worker's latest stats, or None when it did not answer (dead or restarting)."""
        if snap is None:
            self.alive.discard(worker_id)
            return
        self.alive.add(worker_id)
        previous = self.latest.get(worker_id)
        if previous is not None and previous["incarnation"] != snap["incarnation"]:
            _add(self.carry, previous)  # the old incarnation's counts stay counted
        self.latest[worker_id] = snap

    def totals(self) -> dict[str, Any]:
        totals = _empty_totals()
        _add(totals, {**self.carry, "jobs": [[t, o, n] for (t, o), n in self.carry["jobs"].items()]})
        for snap in self.latest.values():
            _add(totals, snap)
        return totals

    def collect(self) -> Iterator[Any]:
        totals = self.totals()
        for name, (bounds, doc) in HISTOGRAMS.items():
            hist = totals["histograms"][name]
            buckets, running = [], 0
            for bound, count in zip([*map(str, bounds), "+Inf"], hist["counts"], strict=True):
                running += count
                buckets.append((bound, running))
            yield HistogramMetricFamily(PREFIX + name, doc, buckets=buckets, sum_value=hist["sum"])
        yield CounterMetricFamily(
            PREFIX + "generated_tokens", "Tokens sampled by the workers.", value=totals["generated_tokens"]
        )
        jobs = CounterMetricFamily(PREFIX + "jobs", "Jobs finished, by type and outcome.", labels=["type", "outcome"])
        for (job_type, outcome), count in sorted(totals["jobs"].items()):
            jobs.add_metric([job_type, outcome], count)
        yield jobs
        yield CounterMetricFamily(
            PREFIX + "offloads", "Session caches offloaded to the snapshot service.", value=totals["offloads"]
        )
        yield CounterMetricFamily(
            PREFIX + "restores", "Offloaded session caches brought back.", value=totals["restores"]
        )
        live = [self.latest[w] for w in self.alive if w in self.latest]
        yield GaugeMetricFamily(
            PREFIX + "active_sessions",
            "Sessions whose KV cache a worker holds.",
            value=sum(s["sessions"] for s in live),
        )
        yield GaugeMetricFamily(
            PREFIX + "kv_cache_bytes", "Bytes of KV cache held by the workers.", value=sum(s["kv_bytes"] for s in live)
        )
        yield GaugeMetricFamily(
            PREFIX + "cold_tier_bytes",
            "Host bytes of pruned keys and values the workers keep for recall.",
            value=sum(s.get("cold_bytes", 0) for s in live),
        )
        yield GaugeMetricFamily(
            PREFIX + "running_conversations",
            "Conversations in the workers' batches (one forward advances them all).",
            value=sum(s["running"] for s in live),
        )
        yield GaugeMetricFamily(
            PREFIX + "waiting_conversations",
            "Opened replies queued for a place in a batch.",
            value=sum(s["waiting"] for s in live),
        )
        budget = sum(s["kv_budget_bytes"] for s in live)
        yield GaugeMetricFamily(
            PREFIX + "kv_cache_usage_ratio",
            "KV bytes held or reserved by running conversations, over the workers' KV budgets.",
            value=(sum(max(s["kv_bytes"], s["kv_reserved_bytes"]) for s in live) / budget) if budget else 0.0,
        )
        yield GaugeMetricFamily(
            PREFIX + "workers_alive", "Worker actors that answered the last poll.", value=len(self.alive)
        )
        yield GaugeMetricFamily(
            "haloweave_jobs_stream_lag",
            "Jobs on the shared Stream not yet delivered to a worker.",
            value=self.stream_lag,
        )
