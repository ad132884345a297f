"""`python -m bench.tracker [--quick]`: a table on stdout, figures in bench/results/tracker.json.

1. Aggregating a 28x28x500 fp16 tensor: the tracker's reduction vs a plain numpy mean, and vs the original tool's 5 ms.
2. Step update (frame bytes in -> scores in Redis -> events appended), in process on a real Redis, at 1k/8k/32k active
   tokens, for a reduced vector and for the `full` tensor (30x9 heads), against the one-hash-field-per-token layout
   (baseline), interleaved over repeats. Pruning is on with the budget at the context size, as in steady use, and the
   attention rows are shaped like SmolLM2's own (bench/tracker/attention.py), so brightness really changes. Also at
   8k: a session that has pruned 56k earlier tokens (the step must cost what the active context costs), and the step
   with Redis pinned to the tracker's core beside this machine's cost of waking an idle Redis (placement.py).
3. The same 8k step through a real tracker process over gRPC, and its Prometheus histogram read back.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import tempfile
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

from bench.tracker import aggregation, placement, remote, steps
from bench.tracker.stats import summary
from devstack.procs import free_port, start_redis
from services.common import model_store
from services.tracker import native, scoring
from services.tracker.engine import Engine
from services.tracker.store import Store
from services.tracker.template import ChatTemplate

RESULTS = Path(__file__).resolve().parents[1] / "results" / "tracker.json"
TARGET_P99_US = {8192: 1000.0, 32768: 5000.0}
WARM_UP_STEPS = 20
LONG_CONTEXT, LONG_HISTORY = 8192, 57344
LONG_KEY, LONG_KIND = "8192:reduced_after_56k_pruned", "+56k pruned"
COLOCATED_KEY, COLOCATED_KIND = "8192:reduced_redis_on_same_core", "Redis pinned"
LONG_SLOWDOWN_ALLOWED = 1.25  # a step after a long pruned history, against the same step without one (p50)
BRIGHTNESS_SAMPLE_STEPS = 20


async def step_bench(
    redis_url: str, redis_pid: int, contexts: list[int], repeats: int, per_repeat: int
) -> dict[str, Any]:
    from transformers import AutoTokenizer

    template = ChatTemplate(AutoTokenizer.from_pretrained(str(model_store.model_path())))
    client = Redis.from_url(redis_url)
    engine = Engine(Store(client), template, "bench", "bench")
    benches = {}
    for context in contexts:
        for full in (False, True):
            benches[(context, full)] = bench = await steps.prepare(engine, context, full)
            await steps.timed_steps(bench, full, WARM_UP_STEPS)  # untimed: lit tokens lit, the rest faded
    # A long conversation under an 8k budget: the step's cost must follow the active context, not the history.
    long = await steps.prepare(engine, LONG_CONTEXT, False, history=LONG_HISTORY)
    await steps.timed_steps(long, False, WARM_UP_STEPS)
    naive_keys = {context: await steps.prepare_naive(client, context) for context in contexts}
    gc.freeze()  # as the tracker process does once it has started (the tokenizer's objects leave the collector's view)
    samples: dict[str, list[float]] = {}
    for _ in range(repeats):  # interleaved: every configuration gets a slice of each repeat
        for context in contexts:
            scale = 4 if context >= 32768 else 1  # the 32k full frames are 17 MB each: fewer of them
            for full in (False, True):
                count = per_repeat // (scale if full else 1)
                got = await steps.timed_steps(benches[(context, full)], full, count)
                samples.setdefault(f"{context}:{'full' if full else 'reduced'}", []).extend(got)
            if context == LONG_CONTEXT:
                samples.setdefault(LONG_KEY, []).extend(await steps.timed_steps(long, False, per_repeat))
                if len(placement.cores()) > 1:
                    own, other = placement.cores()[:2]
                    with placement.pinned(redis_pid, own, own):
                        got = await steps.timed_steps(benches[(context, False)], False, per_repeat)
                        samples.setdefault(COLOCATED_KEY, []).extend(got)
                        samples.setdefault("ping:same_core", []).extend(await placement.ping_after_work(client))
                    with placement.pinned(redis_pid, other, own):
                        samples.setdefault("ping:other_core", []).extend(await placement.ping_after_work(client))
            model = benches[(context, False)].attention
            for _ in range(max(3, per_repeat // (4 * scale))):
                got_naive = await steps.naive_step(client, naive_keys[context], model)
                samples.setdefault(f"{context}:baseline", []).append(got_naive)
    results = {key: summary(values) for key, values in samples.items()}
    labelled = {f"{context}:{'full' if full else 'reduced'}": bench for (context, full), bench in benches.items()}
    for label, bench in {**labelled, LONG_KEY: long}.items():  # what the steps wrote: realistic, not all zeros
        results[label]["brightness_positions_per_step"] = await steps.brightness_per_step(
            client, bench, BRIGHTNESS_SAMPLE_STEPS
        )
    await client.aclose()
    return results


def remote_bench(redis_url: str, log_dir: Path, count: int) -> dict[str, Any]:
    proc, address, metrics_port = remote.start_tracker(redis_url, log_dir)
    try:
        client_samples = asyncio.run(remote.drive(address, 8192, count))
        buckets, total, observed = remote.scrape_histogram(metrics_port)
    finally:
        proc.stop()
    return {
        "client_round_trip": summary(client_samples),
        "histogram_count": observed,
        "histogram_mean_us": total / observed * 1e6 if observed else 0.0,
        "histogram_p50_us": remote.histogram_quantile(0.5, buckets) * 1e6,
        "histogram_p99_us": remote.histogram_quantile(0.99, buckets) * 1e6,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer steps and repeats (about a minute)")
    args = parser.parse_args()
    scoring.single_threaded()  # as the tracker process does at start-up
    repeats, per_repeat, rounds = (2, 40, 300) if args.quick else (3, 100, 1000)
    contexts = [1024, 8192, 32768]
    with tempfile.TemporaryDirectory(prefix="bench-tracker-") as tmp:
        port = free_port()
        redis_proc = start_redis(Path(tmp) / "redis", port, Path(tmp) / "redis.log")
        url = f"redis://127.0.0.1:{port}/0"
        try:
            agg = {k: summary(v) for k, v in aggregation.run(rounds).items()}
            step = asyncio.run(step_bench(url, redis_proc.popen.pid, contexts, repeats, per_repeat))
            agreement = remote_bench(url, Path(tmp), repeats * per_repeat)
        finally:
            redis_proc.stop()
    report = build_report(agg, step, agreement, contexts)
    report["environment"] = environment()
    print(f"environment: {report['environment']}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nfigures written to {RESULTS}")
    return 0 if all(report["targets"].values()) else 1


def environment() -> dict[str, Any]:
    """What the figures depend on: a shared, loaded machine or BLAS/thread settings change them several-fold."""
    import os
    import platform

    import numpy as np
    import torch

    return {
        "cpus": os.cpu_count(),
        "load_average_1m": os.getloadavg()[0],
        "machine": platform.machine(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        **{name: os.environ[name] for name in THREAD_VARIABLES if name in os.environ},
    }


THREAD_VARIABLES = ("OPENBLAS_CORETYPE", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


# The issue that set the targets measured a plain numpy mean of this tensor (float32) at about 64 µs on this kind of
# machine. Shared machines drift by 2-3x from hour to hour; the same mean measured in the same run tells by how much.
REFERENCE_NUMPY_F32_US = 64.0


def machine_pace(agg: dict[str, Any], step: dict[str, Any]) -> dict[str, float]:
    """The run's slowdown against the reference pace, and the target figures scaled by it (never below 1x)."""
    measured = agg["numpy_mean_f32"]["p50_us"]
    slowdown = max(1.0, measured / REFERENCE_NUMPY_F32_US)
    return {
        "numpy_mean_f32_p50_us": measured,
        "slowdown": slowdown,
        "aggregation_vs_5ms": aggregation.JS_REFERENCE_S * 1e6 / (agg["aggregate"]["p50_us"] / slowdown),
        "step_p99_8k_us": step["8192:reduced"]["p99_us"] / slowdown,
        "step_p99_32k_us": step["32768:reduced"]["p99_us"] / slowdown,
    }


def build_report(agg: dict[str, Any], step: dict[str, Any], agreement: dict[str, Any], contexts: list[int]) -> Any:
    kernel = "C kernel, AVX2+F16C" if native.vectorised() else "C kernel, portable" if native.available() else "torch"
    print(f"\nAggregation of a 28x28x500 fp16 attention tensor (baseline: plain numpy mean; tracker path: {kernel})")
    print(f"{'method':<14}{'mean µs':>10}{'p50 µs':>10}{'p99 µs':>10}{'vs numpy':>10}{'vs JS 5 ms':>12}")
    base = agg["numpy_mean"]["p50_us"]
    for name, row in agg.items():
        speedup = aggregation.JS_REFERENCE_S * 1e6 / row["p50_us"]
        ratio = row["p50_us"] / base
        print(
            f"{name:<14}{row['mean_us']:>10.1f}{row['p50_us']:>10.1f}{row['p99_us']:>10.1f}{ratio:>9.2f}x{speedup:>11.0f}x"
        )
    print("\nStep update: frame in -> Redis updated -> events appended (baseline: one hash field per token)")
    print(
        f"{'context':>8} {'frame':<13}{'mean µs':>10}{'p50 µs':>10}{'p99 µs':>10}{'baseline p50':>14}{'speedup':>9}"
        f"{'brightness/step':>17}"
    )
    for context in contexts:
        baseline = step[f"{context}:baseline"]
        rows = {kind: step[f"{context}:{kind}"] for kind in ("reduced", "full", "baseline")}
        if context == LONG_CONTEXT:
            rows[LONG_KIND] = step[LONG_KEY]
            if COLOCATED_KEY in step:
                rows[COLOCATED_KIND] = step[COLOCATED_KEY]
        for kind, row in rows.items():
            speedup = baseline["p50_us"] / row["p50_us"]
            lit = row.get("brightness_positions_per_step")
            print(
                f"{context:>8} {kind:<13}{row['mean_us']:>10.0f}{row['p50_us']:>10.0f}{row['p99_us']:>10.0f}"
                f"{baseline['p50_us']:>14.0f}{speedup:>8.1f}x{'' if lit is None else f'{lit:>17.0f}'}"
            )
    print("  brightness/step: positions per brightness event (scores that changed, at most 512), as written")
    print("  +56k pruned: a reduced 8k step after 56k earlier tokens of the conversation were pruned away")
    if COLOCATED_KEY in step:
        same, other = step["ping:same_core"], step["ping:other_core"]
        print(
            f"  Redis pinned: the reduced 8k step with Redis and the tracker pinned to one core. This machine's cost of"
            f" waking an idle Redis\n    (a PING after {placement.GAP_S * 1e6:.0f} µs of work): p50"
            f" {other['p50_us']:.0f} µs on the other core, {same['p50_us']:.0f} µs on the same core"
            f" (p99 {other['p99_us']:.0f} / {same['p99_us']:.0f})"
        )
    client = agreement["client_round_trip"]
    print("\n8k reduced step through a real tracker process (gRPC) vs its Prometheus histogram")
    print(
        f"  client round trip: mean {client['mean_us']:.0f} µs, p50 {client['p50_us']:.0f}, p99 {client['p99_us']:.0f}"
    )
    print(
        f"  server histogram:  count {agreement['histogram_count']:.0f}, mean {agreement['histogram_mean_us']:.0f} µs,"
        f" p50 ~{agreement['histogram_p50_us']:.0f}, p99 ~{agreement['histogram_p99_us']:.0f} (bucket-interpolated)"
    )
    targets = {
        "aggregation_50x_faster_than_5ms": aggregation.JS_REFERENCE_S * 1e6 / agg["aggregate"]["p50_us"] >= 50,
        "step_p99_8k_reduced_below_1ms": step["8192:reduced"]["p99_us"] < TARGET_P99_US[8192],
        "step_p99_32k_reduced_below_5ms": step["32768:reduced"]["p99_us"] < TARGET_P99_US[32768],
        "step_p50_8k_after_56k_pruned_within_1.25x": step[LONG_KEY]["p50_us"]
        <= LONG_SLOWDOWN_ALLOWED * step["8192:reduced"]["p50_us"],
        "histogram_counts_every_frame": agreement["histogram_count"] == client["n"],
        "histogram_mean_within_client_round_trip": agreement["histogram_mean_us"] <= client["mean_us"],
    }
    print("\nTargets")
    for name, ok in targets.items():
        print(f"  {'PASS' if ok else 'FAIL'}  {name}")
    pace = machine_pace(agg, step)
    print(
        f"\nMachine pace: the plain float32 numpy mean took {pace['numpy_mean_f32_p50_us']:.0f} µs in this run, "
        f"{REFERENCE_NUMPY_F32_US:.0f} µs when the targets were set: this run went {pace['slowdown']:.2f}x slower.\n"
        f"  Scaled to that pace (for reading across runs, not a pass): aggregation "
        f"{pace['aggregation_vs_5ms']:.0f}x faster than 5 ms, 8k step p99 {pace['step_p99_8k_us']:.0f} µs, "
        f"32k step p99 {pace['step_p99_32k_us']:.0f} µs."
    )
    kernel = {"native": native.available(), "vectorised": native.vectorised()}
    return {
        "machine_pace": pace,
        "aggregation": agg,
        "aggregation_kernel": kernel,
        "step_update": step,
        "histogram_agreement": agreement,
        "targets": targets,
    }


if __name__ == "__main__":
    raise SystemExit(main())
