"""`python -m bench.inference [--quick]`: every approach at every context, interleaved over repeats; medians, ratios
against baselines measured in the same run, and the issue's targets; figures to bench/results/inference.json."""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import transformers

from services.inference.engine import Engine

from . import prune
from .models import RANDOM_CONFIGS, build_engine
from .runners import (
    APPROACHES,
    Sample,
    attention_bytes,
    run_engine,
    run_generate,
    run_per_step_full,
    run_sdpa,
)

RESULTS = Path(__file__).resolve().parents[1] / "results" / "inference.json"
GB = 1024**3


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.inference", description=__doc__)
    p.add_argument("--quick", action="store_true", help="contexts 256 and 1k, 2 repeats, 8 new tokens")
    p.add_argument("--contexts", type=int, nargs="+", help="context lengths (default 256 1024 4096)")
    p.add_argument("--repeats", type=int, help="interleaved repeats (default 5)")
    p.add_argument("--new-tokens", type=int, help="decode steps after the prefill (default 32)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    p.add_argument("--threads", type=int, default=2, help="torch threads on CPU")
    p.add_argument("--random-config", choices=sorted(RANDOM_CONFIGS), help="a randomly initialised model at this shape")
    p.add_argument("--prune-context", type=int, default=2048)
    p.add_argument("--prune-count", type=int, default=512)
    p.add_argument(
        "--baseline-limit-gb",
        type=float,
        help="skip baselines whose attentions need more (default: CPU 4 GB, CUDA 40%% of the device)",
    )
    p.add_argument(
        "--per-step-max-context",
        type=int,
        default=None,
        help="largest context for the per-step-full baseline (default 1024 on CPU: ~40 s/step at 4k)",
    )
    p.add_argument("--prune-only", action="store_true", help="only the pruning comparison")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    args.contexts = args.contexts or ([256, 1024] if args.quick else [256, 1024, 4096])
    args.repeats = args.repeats or (2 if args.quick else 5)
    args.new_tokens = args.new_tokens or (8 if args.quick else 32)
    return args


def skip_reason(engine: Engine, approach: str, ctx: int, args: argparse.Namespace) -> str | None:
    cuda = engine.model.device.type == "cuda"
    limit = (
        args.baseline_limit_gb * GB
        if args.baseline_limit_gb
        else (0.4 * torch.cuda.get_device_properties(engine.model.device).total_memory if cuda else 4 * GB)
    )
    needs = attention_bytes(engine, ctx)
    if approach in ("per-step-full", "generate") and needs > limit:
        return f"skipped: its attentions need ~{needs / GB:.0f} GB"
    max_ctx = args.per_step_max_context or (10**9 if cuda else 1024)
    if approach == "per-step-full" and ctx > max_ctx:
        return f"skipped: ~{40 * (ctx / 4096) ** 2:.0f} s per step on this CPU (a full forward per token)"
    return None


def per_step_steps(ctx: int, quick: bool) -> int:
    return 1 if quick or ctx > 512 else 4


def measure(engine: Engine, approach: str, ids: list[int], args: argparse.Namespace) -> Sample:
    if approach == "engine+capture":
        return run_engine(engine, ids, args.new_tokens, capture="mean")
    if approach == "engine":
        return run_engine(engine, ids, args.new_tokens, capture=None)
    if approach == "sdpa":
        return run_sdpa(engine, ids, args.new_tokens)
    if approach == "per-step-full":
        return run_per_step_full(engine, ids, args.new_tokens, per_step_steps(len(ids), args.quick))
    return run_generate(engine, ids, args.new_tokens)


def median(samples: list[Sample], field: str) -> float:
    return float(statistics.median(getattr(s, field) if field != "decode_tok_s" else s.decode_tok_s for s in samples))


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    engine = build_engine(args.device, args.dtype, args.threads, args.random_config)
    rng = np.random.default_rng(0)
    vocab = min(engine.vocab_size, len(engine.tokenizer))
    contexts = {ctx: [int(t) for t in rng.integers(100, vocab, ctx)] for ctx in args.contexts}
    print(
        f"model {engine.model_name} ({engine.num_layers} layers, {engine.num_heads} heads, {engine.num_kv_heads} "
        f"KV heads) on {engine.device} {engine.dtype}, torch threads {torch.get_num_threads()}; "
        f"{args.repeats} interleaved repeats, prefill + {args.new_tokens} decode steps",
        flush=True,
    )

    if args.prune_only:
        args.contexts = []
    skipped = {(a, c): skip_reason(engine, a, c, args) for a in APPROACHES for c in args.contexts}
    samples: dict[tuple[str, int], list[Sample]] = {k: [] for k, why in skipped.items() if why is None}
    warm = [int(t) for t in rng.integers(100, vocab, 64)]
    run_engine(engine, warm, 2, capture="mean")  # warm-up: first-call allocations
    started = time.perf_counter()
    for r in range(args.repeats):
        order = APPROACHES[r % len(APPROACHES) :] + APPROACHES[: r % len(APPROACHES)]
        for ctx in args.contexts:
            for approach in order:
                if (approach, ctx) in samples:
                    samples[(approach, ctx)].append(measure(engine, approach, contexts[ctx], args))
        print(f"  repeat {r + 1}/{args.repeats} done at {time.perf_counter() - started:.0f} s", flush=True)

    prune_result = run_prune(engine, args, rng)
    rows = report(engine, args, samples, skipped, prune_result)
    write(args, engine, samples, skipped, prune_result, rows)
    return 0


def run_prune(engine: Engine, args: argparse.Namespace, rng: np.random.Generator) -> dict[str, Any]:
    n = args.prune_context
    ids = [int(t) for t in rng.integers(100, min(engine.vocab_size, len(engine.tokenizer)), n)]
    filled = prune.fill(engine, ids)
    drop = prune.scattered(n, args.prune_count, seed=1)
    times: dict[str, list[float]] = {"in_place": [], "reprefill": [], "evict_only": [], "rebuild_only": []}
    for r in range(args.repeats):
        for mode in ("in_place", "reprefill") if r % 2 == 0 else ("reprefill", "in_place"):
            cache = engine.import_cache(filled)
            fn = prune.in_place if mode == "in_place" else prune.reprefill
            total, alone = fn(engine, cache, drop, 42)
            times[mode].append(total)
            times["evict_only" if mode == "in_place" else "rebuild_only"].append(alone)
            del cache
    return {
        "context": n,
        "evicted": args.prune_count,
        "in_place_s": times["in_place"],
        "reprefill_s": times["reprefill"],
        "in_place_median_s": statistics.median(times["in_place"]),
        "reprefill_median_s": statistics.median(times["reprefill"]),
        "evict_only_s": times["evict_only"],
        "rebuild_only_s": times["rebuild_only"],
        "evict_only_median_s": statistics.median(times["evict_only"]),
        "rebuild_only_median_s": statistics.median(times["rebuild_only"]),
    }


def report(
    engine: Engine,
    args: argparse.Namespace,
    samples: dict[tuple[str, int], list[Sample]],
    skipped: dict[tuple[str, int], str | None],
    prune_result: dict[str, Any],
) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    header = (
        f"{'ctx':>6} {'approach':<15} {'prefill s':>9} {'decode tok/s':>12} {'e2e s':>8} {'peak MB':>9} "
        f"{'decode ÷ engine':>15} {'e2e ÷ engine+cap':>16}"
    )
    print("\n" + header + "\n" + "-" * len(header))
    for ctx in args.contexts:
        base = samples.get(("engine", ctx))
        capture = samples.get(("engine+capture", ctx))
        for approach in APPROACHES:
            why = skipped[(approach, ctx)]
            if why is not None:
                print(f"{ctx:>6} {approach:<15} {why}")
                rows.append({"context": ctx, "approach": approach, "skipped": why})
                continue
            s = samples[(approach, ctx)]
            row = {
                "context": ctx,
                "approach": approach,
                "prefill_s": median(s, "prefill_s"),
                "decode_tok_s": median(s, "decode_tok_s"),
                "e2e_s": median(s, "e2e_s"),
                "peak_bytes": max(x.peak_bytes for x in s),
                "decode_vs_engine": median(s, "decode_tok_s") / median(base, "decode_tok_s") if base else None,
                "e2e_vs_engine_capture": median(s, "e2e_s") / median(capture, "e2e_s") if capture else None,
                "e2e_extrapolated": approach == "per-step-full",
            }
            rows.append(row)
            mark = "*" if approach == "per-step-full" else " "
            print(
                f"{ctx:>6} {approach:<15} {row['prefill_s']:>9.3f} {row['decode_tok_s']:>12.2f} "
                f"{row['e2e_s']:>7.2f}{mark} {row['peak_bytes'] / 2**20:>9.0f} "
                f"{_fmt(row['decode_vs_engine']):>15} {_fmt(row['e2e_vs_engine_capture']):>16}"
            )
    print("* per-step-full: e2e extrapolated from the steps timed (each step is one full forward of the context)")
    print(
        f"\nprune {prune_result['evicted']} of {prune_result['context']} positions, then the next token: in place "
        f"{prune_result['in_place_median_s'] * 1000:.1f} ms, reprefill {prune_result['reprefill_median_s']:.2f} s "
        f"→ {prune_result['reprefill_median_s'] / prune_result['in_place_median_s']:.0f}× faster in place"
    )
    # Both sides end with the same decode step, so the ratio can never exceed (rebuild + step) ÷ step: what an
    # eviction costing nothing would reach. Printed so that the target can be read against it.
    step = prune_result["in_place_median_s"] - prune_result["evict_only_median_s"]
    if step > 0:
        ceiling = prune_result["reprefill_median_s"] / step
        prune_result["ceiling_with_free_eviction"] = ceiling
        print(
            f"  of which eviction {prune_result['evict_only_median_s'] * 1000:.1f} ms and the next decode step "
            f"{step * 1000:.1f} ms: even a free eviction would make it at most {ceiling:.0f}× here"
        )
    targets(rows, args, prune_result)
    return rows


def _fmt(x: float | None) -> str:
    return "—" if x is None else f"{x:.3f}" if x > 0.1 else f"{x:.4f}"


def _row(rows: list[dict[str, Any]], approach: str, ctx: int) -> dict[str, Any] | None:
    for row in rows:
        if row["approach"] == approach and row["context"] == ctx and "skipped" not in row:
            return row
    return None


def targets(rows: list[dict[str, Any]], args: argparse.Namespace, prune_result: dict[str, Any]) -> None:
    print("\ntargets")
    checks: list[tuple[str, float | None, float, str]] = []
    for ctx in args.contexts:
        a = _row(rows, "engine+capture", ctx)
        checks.append((f"capture on ÷ off, decode tok/s at {ctx}", a["decode_vs_engine"] if a else None, 0.97, ">="))
    if args.contexts:
        mid = 1024 if 1024 in args.contexts else args.contexts[0]
        a, c, d, b = (_row(rows, x, mid) for x in ("engine+capture", "per-step-full", "generate", "engine"))
        checks.append(
            (
                f"engine+capture ÷ per-step-full, decode tok/s at {mid}",
                a["decode_tok_s"] / c["decode_tok_s"] if a and c else None,
                50,
                ">=",
            )
        )
        checks.append(
            (f"generate ÷ engine+capture, e2e time at {mid}", d["e2e_s"] / a["e2e_s"] if a and d else None, 1.5, ">=")
        )
        top = max(args.contexts)
        a, b = _row(rows, "engine+capture", top), _row(rows, "engine", top)
        capture_gb = max(0.0, a["peak_bytes"] - b["peak_bytes"]) / GB if a and b else None
        checks.append((f"capture memory at {top} (peak above capture off), GB", capture_gb, 1.0, "<"))
    checks.append(
        (
            f"reprefill ÷ in place, prune-to-next-token at {prune_result['context']}",
            prune_result["reprefill_median_s"] / prune_result["in_place_median_s"],
            50,
            ">=",
        )
    )
    checks.append(
        (
            f"rebuild alone ÷ eviction alone at {prune_result['context']}",
            prune_result["rebuild_only_median_s"] / prune_result["evict_only_median_s"],
            50,
            ">=",
        )
    )
    for name, value, bound, op in checks:
        ok = value is not None and (value >= bound if op == ">=" else value < bound)
        shown = "n/a" if value is None else f"{value:.3f}"
        print(f"  {'PASS' if ok else 'FAIL' if value is not None else 'n/a '}  {name}: {shown} (target {op} {bound})")


def write(
    args: argparse.Namespace,
    engine: Engine,
    samples: dict[tuple[str, int], list[Sample]],
    skipped: dict[tuple[str, int], str | None],
    prune_result: dict[str, Any],
    rows: list[dict[str, Any]],
) -> None:
    data = {
        "meta": {
            "model": engine.model_name,
            "device": engine.device,
            "device_name": torch.cuda.get_device_name(engine.model.device)
            if engine.device != "cpu"
            else platform.processor() or platform.machine(),
            "dtype": engine.dtype,
            "threads": torch.get_num_threads(),
            "repeats": args.repeats,
            "new_tokens": args.new_tokens,
            "contexts": args.contexts,
            "quick": args.quick,
            "random_config": args.random_config,
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        },
        "summary": rows,
        "samples": {f"{a}@{c}": [s.as_dict() for s in v] for (a, c), v in samples.items()},
        "skipped": {f"{a}@{c}": why for (a, c), why in skipped.items() if why},
        "prune": prune_result,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(data, indent=2))
    print(f"\nfigures written to {args.out}")


if __name__ == "__main__":
    sys.exit(main())
