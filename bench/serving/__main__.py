"""`python -m bench.serving [--quick]`: many conversations at once through the whole system.

Real gateway WebSocket clients, the tracker, Redis and one inference worker (Ray) with the embedded model. For N
conversations that send a message at the same moment (prompts of ~100 and ~1,000 tokens, 64 new tokens, greedy):
aggregate generated tokens/s, time to first token p50/p90/p99 and inter-token latency p50/p99, interleaved over
repeats with two baselines measured in the same run: the same system with at most one running conversation (the
behaviour before continuous batching) and transformers' `generate` on a left-padded batch of the same prompts (no
capture). Then a ~2,000-token prompt arriving while 8 others decode, and the cost of capture in a batched step.
Prints the table and the issue's targets, writes bench/results/serving.json.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import platform
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from devstack.stack import Stack
from services.common import model_store
from services.inference import engine_thread
from services.inference.engine import Engine, EngineConfig

from . import baselines, prompts
from .clients import Reply, burst

RESULTS = Path(__file__).resolve().parents[1] / "results" / "serving.json"
SYSTEMS = {"batched": {}, "one_at_a_time": {"HALOWEAVE_MAX_RUNNING": "1"}}


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.serving", description=__doc__)
    p.add_argument("--quick", action="store_true", help="N = 1 and 8 at ~100 tokens, 24 new tokens, one repeat")
    p.add_argument("--conversations", type=int, nargs="+", help="values of N (default 1 2 4 8 16)")
    p.add_argument("--baseline-conversations", type=int, nargs="+", help="N for the one-at-a-time system (1 8)")
    p.add_argument("--lengths", type=int, nargs="+", help="prompt tokens (default 100 1000)")
    p.add_argument("--new-tokens", type=int, help="tokens per reply (default 64)")
    p.add_argument("--late-length", type=int, help="the prompt that arrives while 8 decode (default 2000)")
    p.add_argument("--repeats", type=int, help="interleaved repeats (default 2)")
    args = p.parse_args(argv)
    quick = args.quick
    args.conversations = args.conversations or ([1, 8] if quick else [1, 2, 4, 8, 16])
    args.baseline_conversations = args.baseline_conversations or [1, 8]
    args.lengths = args.lengths or ([100] if quick else [100, 1000])
    args.new_tokens = args.new_tokens or (24 if quick else 64)
    args.late_length = args.late_length or (1000 if quick else 2000)
    args.repeats = args.repeats or (1 if quick else 2)
    return args


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def summarise(runs: list[list[Reply]]) -> dict[str, float]:
    """Pooled over repeats: aggregate tokens/s is each burst's tokens over its wall time (median over bursts)."""
    rates, ttfts, gaps, errors = [], [], [], 0
    for replies in runs:
        ok = [r for r in replies if not r.error and r.arrivals]
        errors += len(replies) - len(ok)
        if ok:
            wall = max(r.done for r in ok) - min(r.sent for r in ok)
            rates.append(sum(len(r.arrivals) for r in ok) / wall)
        ttfts += [r.ttft for r in ok]
        gaps += [g for r in ok for g in r.gaps]
    return {
        "tokens_per_s": statistics.median(rates) if rates else float("nan"),
        "ttft_p50_s": pct(ttfts, 50),
        "ttft_p90_s": pct(ttfts, 90),
        "ttft_p99_s": pct(ttfts, 99),
        "itl_p50_s": pct(gaps, 50),
        "itl_p99_s": pct(gaps, 99),
        "errors": errors,
        "bursts": len(runs),
    }


def header_tokens(tokenizer: Any) -> int:
    return len(prompts.chat_ids(tokenizer, "x")) - len(prompts.chat_ids(tokenizer, "x", generation=False))


def start_stacks(root: Path) -> dict[str, Stack]:
    stacks = {}
    for name, extra in SYSTEMS.items():
        env = {"HALOWEAVE_LOG_LEVEL": "WARNING", "HALOWEAVE_KV_BUDGET_BYTES": str(8 * 1024**3), **extra}
        print(f"starting the {name} system ...", flush=True)
        stacks[name] = Stack(root / name, redis_appendonly=False, env=env).start()
    return stacks


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    # A plain kill must still stop the stacks this started (their `finally`), not leave them running.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    # Every torch call of this process runs on the engine thread, as in a worker (engine_thread explains why).
    on_engine = engine_thread.shared().call
    path = str(model_store.model_path())
    engine = on_engine(Engine, EngineConfig(threads=2))
    tokenizer = engine.tokenizer
    header = header_tokens(tokenizer)
    top = max(args.conversations)
    texts = {n: [prompts.prompt(tokenizer, n, seed=1000 * n + i) for i in range(top)] for n in args.lengths}
    late = prompts.prompt(tokenizer, args.late_length, seed=7)
    settings = {"max_new_tokens": args.new_tokens, "temperature": 0.0}
    generate = on_engine(baselines.PaddedGenerate, path, tokenizer)
    prefill_runs: dict[str, list[float]] = {}

    def measure_prefill() -> None:
        """Each prompt's prefill alone on the engine, taken in every repeat between the bursts (stacks idle)."""
        for n in args.lengths:
            # The first token of N = 8 waits at least for all eight prefills: their sum, each measured alone.
            alone = [on_engine(baselines.prefill_alone, engine, prompts.chat_ids(tokenizer, t)) for t in texts[n][:8]]
            prefill_runs.setdefault(f"sum8_{n}", []).append(sum(alone))
            prefill_runs.setdefault(f"one_{n}", []).append(statistics.median(alone))
        late_ids = prompts.chat_ids(tokenizer, late)
        prefill_runs.setdefault("late", []).append(on_engine(baselines.prefill_alone, engine, late_ids))

    cells: dict[tuple[str, int, int], list[list[Reply]]] = {}
    generated: dict[tuple[int, int], list[float]] = {}
    alone: dict[tuple[int, int], list[float]] = {}
    late_runs: list[tuple[list[Reply], Reply]] = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="hw-serving-") as tmp:
        stacks = start_stacks(Path(tmp))
        try:
            for rep in range(args.repeats):
                measure_prefill()
                for length in args.lengths:
                    for n in args.conversations:
                        for name, stack in stacks.items():
                            if name == "one_at_a_time" and n not in args.baseline_conversations:
                                continue
                            replies, _ = asyncio.run(burst(stack.ws_url, texts[length][:n], settings, header))
                            cells.setdefault((name, length, n), []).append(replies)
                            row = summarise([replies])
                            progress(rep, name, length, n, row["tokens_per_s"], started, row["ttft_p90_s"])
                        tokens, seconds = on_engine(generate.run, texts[length][:n], args.new_tokens)
                        generated.setdefault((length, n), []).append(tokens / seconds)
                        progress(rep, "padded_generate", length, n, tokens / seconds, started)
                        tokens, seconds = baselines.engine_alone(engine, texts[length][:n], args.new_tokens)
                        alone.setdefault((length, n), []).append(tokens / seconds)
                        progress(rep, "engine_alone", length, n, tokens / seconds, started)
                decoding, long = asyncio.run(
                    burst(stacks["batched"].ws_url, texts[args.lengths[0]][:8], settings, header, late=late)
                )
                assert long is not None
                late_runs.append((decoding, long))
                print(f"  rep {rep + 1} late {args.late_length}-token prompt: first token after {long.ttft:.2f} s",
                      flush=True)  # fmt: skip
        finally:
            for stack in stacks.values():
                stack.stop()
    prefill = {name: statistics.median(values) for name, values in prefill_runs.items()}
    capture = on_engine(baselines.capture_cost, engine, 8, args.lengths[0], 8, 15)
    bound = on_engine(baselines.gemm_bound, engine, 8)
    report = build_report(
        args, cells, {"padded_generate": generated, "engine_alone": alone}, late_runs, prefill, capture
    )
    report["gemm_bound"] = bound
    print_report(report)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwritten: {RESULTS}")
    return 0 if all(t["passed"] for t in report["targets"]) else 1


def progress(rep: int, name: str, length: int, n: int, rate: float, started: float, ttft: float | None = None) -> None:
    line = f"  rep {rep + 1} {name:<15} {length:>5} tok × {n:>2}: {rate:6.1f} tok/s"
    if ttft is not None:
        line += f", ttft p90 {ttft:6.2f} s"
    print(f"{line}  [{time.perf_counter() - started:5.0f} s]", flush=True)


def late_window(decoding: list[Reply], long: Reply) -> tuple[list[float], list[float]]:
    """The decoding conversations' gaps (during the long prompt's prefill, at any other time): a gap counts as
    during when it ends between the long prompt's send and its first token."""
    start, end = long.sent, long.arrivals[0] if long.arrivals else long.done
    during, steady = [], []
    for r in decoding:
        for a, b in itertools.pairwise(r.arrivals):
            (during if start < b <= end else steady).append(b - a)
    return during, steady


def build_report(
    args: argparse.Namespace,
    cells: dict[tuple[str, int, int], list[list[Reply]]],
    in_process: dict[str, dict[tuple[int, int], list[float]]],
    late_runs: list[tuple[list[Reply], Reply]],
    prefill: dict[str, float],
    capture: dict[str, float],
) -> dict[str, Any]:
    rows = []
    for (name, length, n), runs in sorted(cells.items(), key=lambda kv: (kv[0][1], kv[0][0], kv[0][2])):
        rows.append({"system": name, "prompt_tokens": length, "conversations": n, **summarise(runs)})
    for system, measured in in_process.items():
        for (length, n), rates in sorted(measured.items()):
            rows.append({"system": system, "prompt_tokens": length, "conversations": n,
                         "tokens_per_s": statistics.median(rates), "bursts": len(rates)})  # fmt: skip
    windows = [late_window(d, long) for d, long in late_runs]
    during = [g for w in windows for g in w[0]]
    steady = [g for w in windows for g in w[1]]
    late = {
        "prompt_tokens": args.late_length,
        "ttft_s": statistics.median([long.ttft for _, long in late_runs if long.arrivals]),
        "prefill_alone_s": prefill["late"],
        # The decoders' p99 while the long prompt is fed, against their own p50 when it is not.
        "decoders_itl_p50_s": pct(steady, 50),
        "decoders_itl_p99_during_s": pct(during, 99),
        "decoders_itl_p50_during_s": pct(during, 50),
        "gaps": len(during),
    }

    def cell(system: str, length: int, n: int, key: str) -> float:
        for row in rows:
            if (row["system"], row["prompt_tokens"], row["conversations"]) == (system, length, n):
                return float(row.get(key, float("nan")))
        return float("nan")

    short = args.lengths[0]
    n8 = 8 if 8 in args.conversations else max(args.conversations)
    targets = []

    def target(name: str, value: float, bound: float, at_least: bool) -> None:
        passed = value >= bound if at_least else value <= bound
        targets.append({"target": name, "value": value, "bound": bound, "at_least": at_least, "passed": passed})

    target(
        f"tokens/s N={n8} ÷ N=1 ({short} tok)",
        cell("batched", short, n8, "tokens_per_s") / cell("batched", short, 1, "tokens_per_s"),
        4.0,
        True,
    )
    target(
        f"tokens/s N={n8} ÷ padded generate ({short} tok)",
        cell("batched", short, n8, "tokens_per_s") / cell("padded_generate", short, n8, "tokens_per_s"),
        1.0,
        True,
    )
    for length in args.lengths:
        target(
            f"TTFT p90 N={n8} ÷ sum of 8 prefills alone ({length} tok)",
            cell("batched", length, n8, "ttft_p90_s") / prefill[f"sum8_{length}"],
            1.3,
            False,
        )
        if n8 in args.baseline_conversations:
            target(
                f"one-at-a-time TTFT p90 ÷ batched, N={n8} ({length} tok)",
                cell("one_at_a_time", length, n8, "ttft_p90_s") / cell("batched", length, n8, "ttft_p90_s"),
                10.0,
                True,
            )
    target(
        f"decoders' ITL p99 while {args.late_length} tokens prefill ÷ their p50 otherwise",
        late["decoders_itl_p99_during_s"] / late["decoders_itl_p50_s"],
        3.0,
        False,
    )
    target(
        f"{args.late_length}-token prompt TTFT ÷ its prefill alone",
        late["ttft_s"] / late["prefill_alone_s"],
        2.0,
        False,
    )
    target(
        "capture cost: batched tokens/s off ÷ on − 1",
        capture["off_tokens_per_s"] / capture["on_tokens_per_s"] - 1,
        0.03,
        False,
    )
    return {
        "bench": "serving",
        "args": {k: v for k, v in vars(args).items()},
        "machine": {
            "platform": platform.platform(),
            "python": sys.version.split()[0],
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
        },
        "prefill_alone_s": prefill,
        "rows": rows,
        "late_prompt": late,
        "capture": capture,
        "targets": targets,
    }


def print_report(report: dict[str, Any]) -> None:
    print("\n| system | prompt | N | tokens/s | × N=1 | TTFT p50 | p90 | p99 | ITL p50 | p99 | errors |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    base = {(r["system"], r["prompt_tokens"]): r["tokens_per_s"] for r in report["rows"] if r["conversations"] == 1}
    for r in report["rows"]:
        ratio = r["tokens_per_s"] / base.get((r["system"], r["prompt_tokens"]), float("nan"))

        def ms(key: str, row: dict[str, Any] = r) -> str:
            return f"{row[key] * 1000:.0f} ms" if key in row else "—"

        print(f"| {r['system']} | {r['prompt_tokens']} | {r['conversations']} | {r['tokens_per_s']:.1f} | {ratio:.2f} "
              f"| {ms('ttft_p50_s')} | {ms('ttft_p90_s')} | {ms('ttft_p99_s')} | {ms('itl_p50_s')} | {ms('itl_p99_s')} "
              f"| {r.get('errors', '—')} |")  # fmt: skip
    p = report["prefill_alone_s"]
    print("\nprefill alone: " + ", ".join(f"{k} {v:.2f} s" for k, v in p.items()))
    late = report["late_prompt"]
    print(
        f"late {late['prompt_tokens']}-token prompt: first token {late['ttft_s']:.2f} s"
        f" (its prefill alone {late['prefill_alone_s']:.2f} s); the decoders' ITL while it is fed: p50"
        f" {late['decoders_itl_p50_during_s'] * 1000:.0f} ms, p99 {late['decoders_itl_p99_during_s'] * 1000:.0f} ms"
        f" ({late['gaps']} gaps), otherwise p50 {late['decoders_itl_p50_s'] * 1000:.0f} ms"
    )
    b = report["gemm_bound"]
    print(
        f"the model's weight GEMMs alone: {b['gemm_1_s'] * 1000:.1f} ms at M = 1, {b['gemm_8_s'] * 1000:.1f} ms at"
        f" M = 8: batching 8 decodes can give at most {b['bound']:.2f}× one decode's tokens/s on this machine"
    )
    c = report["capture"]
    print(f"capture in a batch of 8: {c['on_tokens_per_s']:.1f} tok/s on, {c['off_tokens_per_s']:.1f} off")
    rates = {(r["system"], r["conversations"]): r["tokens_per_s"] for r in report["rows"] if r["prompt_tokens"] == 100}
    if ("engine_alone", 8) in rates and ("padded_generate", 8) in rates:
        print(
            f"N = 8 at 100 tokens: engine alone {rates[('engine_alone', 8)]:.1f} tok/s, padded generate"
            f" {rates[('padded_generate', 8)]:.1f}, the whole system {rates.get(('batched', 8), float('nan')):.1f}"
        )
    print("\n| target | value | bound | |")
    print("|---|---|---|---|")
    for t in report["targets"]:
        sign = "≥" if t["at_least"] else "≤"
        print(f"| {t['target']} | {t['value']:.3f} | {sign} {t['bound']} | {'pass' if t['passed'] else 'FAIL'} |")


if __name__ == "__main__":
    sys.exit(main())
