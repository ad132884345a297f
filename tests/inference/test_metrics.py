"""Worker stats rendered as Prometheus metrics by the driver's collector, across workers and restarts."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from services.inference.metrics import StatsCollector, WorkerStats


def samples(collector: StatsCollector) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    registry = CollectorRegistry()
    registry.register(collector)
    text = generate_latest(registry).decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def busy_stats(worker_id: str, tokens: int) -> WorkerStats:
    stats = WorkerStats(worker_id, ready=True)
    stats.generated_tokens = tokens
    stats.job("generate", "eos")
    stats.observe("time_to_first_token_seconds", 0.3)
    stats.observe("inter_token_latency_seconds", 0.04)
    stats.observe("inter_token_latency_seconds", 0.06)
    stats.sessions, stats.kv_bytes = 2, 1000
    return stats


def test_sums_over_workers_with_the_documented_names() -> None:
    collector = StatsCollector()
    collector.update("w-0", busy_stats("w-0", 5).to_dict())
    collector.update("w-1", busy_stats("w-1", 7).to_dict())
    collector.stream_lag = 3
    got = samples(collector)
    assert got[("haloweave_inference_generated_tokens_total", ())] == 12
    assert got[("haloweave_inference_jobs_total", (("outcome", "eos"), ("type", "generate")))] == 2
    assert got[("haloweave_inference_time_to_first_token_seconds_count", ())] == 2
    assert got[("haloweave_inference_inter_token_latency_seconds_bucket", (("le", "0.05"),))] == 2
    assert got[("haloweave_inference_inter_token_latency_seconds_count", ())] == 4
    assert got[("haloweave_inference_active_sessions", ())] == 4
    assert got[("haloweave_inference_kv_cache_bytes", ())] == 2000
    assert got[("haloweave_inference_workers_alive", ())] == 2
    assert got[("haloweave_jobs_stream_lag", ())] == 3
    for name in ("queue_wait_seconds_count", "offloads_total", "restores_total"):
        assert ("haloweave_inference_" + name, ()) in got


def test_counters_survive_a_worker_restart_and_gauges_drop_dead_workers() -> None:
    collector = StatsCollector()
    collector.update("w-0", busy_stats("w-0", 5).to_dict())
    collector.update("w-0", None)  # dead: its held caches are gone
    got = samples(collector)
    assert got[("haloweave_inference_workers_alive", ())] == 0
    assert got[("haloweave_inference_kv_cache_bytes", ())] == 0
    assert got[("haloweave_inference_generated_tokens_total", ())] == 5
    collector.update("w-0", busy_stats("w-0", 1).to_dict())  # restarted: a new incarnation counting from zero
    got = samples(collector)
    assert got[("haloweave_inference_generated_tokens_total", ())] == 6
    assert got[("haloweave_inference_jobs_total", (("outcome", "eos"), ("type", "generate")))] == 2
    assert got[("haloweave_inference_workers_alive", ())] == 1
