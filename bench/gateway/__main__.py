"""`python -m bench.gateway [--quick]`: WebSocket delivery through the gateway for N = 1, 8, 32 concurrent clients.

For each N the same producer cadence is read by N gateway WebSocket clients and, as the baseline, by N direct Redis
Stream readers; the two are interleaved over repeats. Reported per N and mode: delivery latency (step appended →
frame received), delivery overhead (inter-token time at the client minus the producer's), and lost/duplicated frames.
Targets: overhead p50 < 5 ms, brightness delivered < 50 ms after its step (p99), zero lost or duplicated frames.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.gateway import load
from bench.gateway.stack import Running, running

RESULTS = Path(__file__).resolve().parents[1] / "results" / "gateway.json"
SIZES = (1, 8, 32)


def measure(result: load.RunResult) -> dict[str, Any]:
    delivery: list[float] = []
    overhead: list[float] = []
    lost = duplicated = out_of_order = 0
    for log, expected in zip(result.logs, result.expected_ids, strict=True):
        steps = sorted(log.arrivals)
        delivery.extend((log.arrivals[s] - log.stamps[s]) * 1000 for s in steps)
        for previous, step in itertools.pairwise(steps):
            client = log.arrivals[step] - log.arrivals[previous]
            producer = log.stamps[step] - log.stamps[previous]
            overhead.append((client - producer) * 1000)
        lost += len(set(expected) - set(log.ids))
        duplicated += len(log.ids) - len(set(log.ids))
        out_of_order += sum(1 for a, b in zip(log.ids, log.ids[1:], strict=False) if b <= a)
    d, o = np.array(delivery), np.array(overhead)
    return {
        "frames": int(sum(len(log.ids) for log in result.logs)),
        "delivery_ms_p50": float(np.percentile(d, 50)),
        "delivery_ms_p95": float(np.percentile(d, 95)),
        "delivery_ms_p99": float(np.percentile(d, 99)),
        "delivery_ms_max": float(d.max()),
        "overhead_ms_p50": float(np.percentile(o, 50)),
        "overhead_ms_abs_p95": float(np.percentile(np.abs(o), 95)),
        "lost": lost,
        "duplicated": duplicated,
        "out_of_order": out_of_order,
    }


def merge(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over repeats for timings; sums for the frame accounting (any loss anywhere counts)."""
    merged: dict[str, Any] = {}
    for key in runs[0]:
        values = [r[key] for r in runs]
        merged[key] = (
            sum(values) if key in ("frames", "lost", "duplicated", "out_of_order") else float(np.median(values))
        )
    return merged


async def bench(stack: Running, steps: int, interval: float, repeats: int, sizes: tuple[int, ...]) -> dict[str, Any]:
    sessions = await load.new_sessions(stack.ws_url, max(sizes))
    await load.run("gateway", stack.ws_url, stack.redis_url, sessions[:2], 10, interval)  # warm-up
    raw: dict[tuple[int, str], list[dict[str, Any]]] = {}
    for repeat in range(repeats):
        for n in sizes:
            # Alternate which mode goes first, so drift in machine load does not favour one of them.
            modes = ("direct", "gateway") if repeat % 2 == 0 else ("gateway", "direct")
            for mode in modes:
                result = await load.run(mode, stack.ws_url, stack.redis_url, sessions[:n], steps, interval)
                raw.setdefault((n, mode), []).append(measure(result))
                print(f"  repeat {repeat + 1}/{repeats} N={n:<3} {mode:<8} done", flush=True)
    return {f"{n}/{mode}": merge(runs) for (n, mode), runs in raw.items()}


def table(results: dict[str, Any], sizes: tuple[int, ...]) -> str:
    head = (
        f"{'N':>3} {'reader':<8} {'deliv p50':>9} {'p95':>7} {'p99':>7} {'max':>7} {'ovh p50':>8} {'|ovh| p95':>9}"
        f" {'lost':>5} {'dup':>4} {'p50 ratio':>9} {'p99 ratio':>9}"
    )
    lines = [head, "-" * len(head)]
    for n in sizes:
        base = results[f"{n}/direct"]
        for mode in ("direct", "gateway"):
            r = results[f"{n}/{mode}"]
            ratio50 = r["delivery_ms_p50"] / max(base["delivery_ms_p50"], 1e-9)
            ratio99 = r["delivery_ms_p99"] / max(base["delivery_ms_p99"], 1e-9)
            lines.append(
                f"{n:>3} {mode:<8} {r['delivery_ms_p50']:>8.2f}m {r['delivery_ms_p95']:>6.2f}m"
                f" {r['delivery_ms_p99']:>6.2f}m {r['delivery_ms_max']:>6.1f}m {r['overhead_ms_p50']:>7.3f}m"
                f" {r['overhead_ms_abs_p95']:>8.2f}m {r['lost']:>5} {r['duplicated']:>4}"
                f" {ratio50:>8.2f}x {ratio99:>8.2f}x"
            )
    return "\n".join(lines) + "\n(m = milliseconds; ratios are gateway / direct Redis reader, same run)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="one repeat of 40 steps (about half a minute)")
    parser.add_argument("--steps", type=int, default=150, help="token steps per run (default 150)")
    parser.add_argument("--interval-ms", type=float, default=20.0, help="producer inter-token time (default 20 ms)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    steps, repeats = (40, 1) if args.quick else (args.steps, args.repeats)
    started = time.monotonic()
    # The processes start outside the event loop: their health checks run loops of their own.
    with tempfile.TemporaryDirectory(prefix="bench-gateway-") as tmp, running(Path(tmp)) as stack:
        results = asyncio.run(bench(stack, steps, args.interval_ms / 1000, repeats, SIZES))
    print()
    print(table(results, SIZES))
    gateway = [results[f"{n}/gateway"] for n in SIZES]
    checks = {
        "overhead_p50_under_5ms": all(abs(r["overhead_ms_p50"]) < 5 for r in gateway),
        "brightness_p99_under_50ms": all(r["delivery_ms_p99"] < 50 for r in gateway),
        "no_lost_or_duplicated_frames": all(
            r["lost"] == 0 and r["duplicated"] == 0 and r["out_of_order"] == 0 for r in gateway
        ),
    }
    for name, ok in checks.items():
        print(f"{'PASS' if ok else 'FAIL'} {name}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "benchmark": "gateway",
                "steps": steps,
                "interval_ms": args.interval_ms,
                "repeats": repeats,
                "baseline": "direct Redis Stream reader (XREAD BLOCK) per session",
                "results": results,
                "checks": checks,
                "seconds": round(time.monotonic() - started, 1),
            },
            indent=2,
        )
    )
    print(f"figures written to {RESULTS}")
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
