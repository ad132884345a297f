"""`python -m bench.engines [--quick]`: the native engine against the vLLM engine, each in its own environment and
process, interleaved over repeats (the order alternates). Decode throughput at 1, 8 and 16 concurrent requests for
native + capture, vLLM + capture and vLLM without capture; capture's cost inside vLLM; and the next token after a
prune: native in-place eviction against vLLM's re-prefill with prefix caching. Medians with their spread (max/min
over repeats, the run's noise), ratios measured in the same run; figures to bench/results/engines.json."""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from devstack.procs import python_module
from devstack.vllm_env import vllm_python

from .workload import add_workload, workload_argv

RESULTS = Path(__file__).resolve().parents[1] / "results" / "engines.json"
ENGINES = ("native", "vllm")


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.engines", description=__doc__)
    p.add_argument("--quick", action="store_true", help="1 and 4 requests, 8 new tokens, a 256-token prune, 1 repeat")
    p.add_argument("--repeats", type=int, default=3)
    add_workload(p)
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    if args.quick:
        args.repeats, args.concurrency, args.new_tokens = 1, [1, 4], 8
        args.prompt_tokens, args.prune_context, args.prune_count = 32, 256, 64
    return args


def probe(engine: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    python = vllm_python() if engine == "vllm" else None
    argv = python_module("bench.engines.probe", "--engine", engine, *workload_argv(args), python=python)
    # Both engines' OpenMP threads wait passively: on a machine shared with other work, spinning threads make a run
    # measure the contention rather than the engine (docs/vllm.md).
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "KMP_BLOCKTIME": "0"}
    done = subprocess.run(argv, capture_output=True, text=True, check=False, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"the {engine} probe failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


def median_spread(values: list[float]) -> tuple[float, float]:
    return statistics.median(values), (max(values) / min(values) if min(values) > 0 else float("inf"))


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    load = os.getloadavg()[0]
    print(f"engines bench: {args.repeats} repeat(s), load average {load:.2f} at start", flush=True)
    batch: dict[tuple[str, int, str], list[float]] = defaultdict(list)
    prunes: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    started = time.perf_counter()
    for r in range(args.repeats):
        for engine in ENGINES if r % 2 == 0 else ENGINES[::-1]:
            for row in probe(engine, args):
                if row["kind"] == "batch":
                    batch[(engine, row["concurrency"], row["capture"])].append(row["tokens_per_s"])
                else:
                    prunes[(engine, row["where"])].append(row)
        print(f"  repeat {r + 1}/{args.repeats} done at {time.perf_counter() - started:.0f} s", flush=True)

    rows: list[dict[str, Any]] = []
    print("\nDecode throughput, tokens/s: median (max/min over repeats)")
    header = (
        f"{'requests':>8}  {'native+capture':>16}  {'vLLM':>16}  {'vLLM+capture':>16}"
        f"  {'capture cost':>12}  {'vLLM+c/native+c':>15}"
    )
    print(header + "\n" + "-" * len(header))
    for n in args.concurrency:
        native, native_spread = median_spread(batch[("native", n, "mean")])
        plain, plain_spread = median_spread(batch[("vllm", n, "off")])
        captured, captured_spread = median_spread(batch[("vllm", n, "mean")])
        cost, versus = plain / captured, captured / native
        print(
            f"{n:>8}  {native:>9.1f} ({native_spread:.2f})  {plain:>9.1f} ({plain_spread:.2f})"
            f"  {captured:>9.1f} ({captured_spread:.2f})  {cost:>11.2f}x  {versus:>14.2f}x"
        )
        rows.append(
            {
                "requests": n,
                "native_capture_tps": native,
                "vllm_tps": plain,
                "vllm_capture_tps": captured,
                "capture_cost": cost,
                "vllm_capture_over_native_capture": versus,
                "spread": {"native": native_spread, "vllm": plain_spread, "vllm_capture": captured_spread},
            }
        )
    print(
        f"\nNext token after pruning {args.prune_count} of {args.prune_context} tokens, ms: median (max/min);"
        " a plain decode step for reference"
    )
    header = (
        f"{'pruned':>10}  {'native in place':>16}  {'vLLM re-prefill':>16}  {'ratio':>6}"
        f"  {'vLLM reused':>11}  {'native step':>11}  {'vLLM step':>9}"
    )
    print(header + "\n" + "-" * len(header))
    prune_rows = []
    for where in ("scattered", "late"):
        native_rows, vllm_rows = prunes[("native", where)], prunes[("vllm", where)]
        native, native_spread = median_spread([1000 * r["prune_s"] for r in native_rows])
        rebuilt, rebuilt_spread = median_spread([1000 * r["prune_s"] for r in vllm_rows])
        reused = statistics.median(r["reused"] for r in vllm_rows)
        native_step = statistics.median(1000 * r["step_s"] for r in native_rows)
        vllm_step = statistics.median(1000 * r["step_s"] for r in vllm_rows)
        print(
            f"{where:>10}  {native:>9.1f} ({native_spread:.2f})  {rebuilt:>9.1f} ({rebuilt_spread:.2f})"
            f"  {rebuilt / native:>5.1f}x  {reused:>11.0f}  {native_step:>11.1f}  {vllm_step:>9.1f}"
        )
        prune_rows.append(
            {
                "where": where,
                "native_in_place_ms": native,
                "vllm_reprefill_ms": rebuilt,
                "ratio": rebuilt / native,
                "vllm_reused_tokens": reused,
                "native_step_ms": native_step,
                "vllm_step_ms": vllm_step,
            }
        )
    end_load = os.getloadavg()[0]
    print(f"\nload average {load:.2f} at start, {end_load:.2f} at the end; {time.perf_counter() - started:.0f} s")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    args.out.write_text(
        json.dumps({"settings": settings, "load": [load, end_load], "batch": rows, "prune": prune_rows}, indent=1)
    )
    print(f"results: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
