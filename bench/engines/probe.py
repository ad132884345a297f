"""One engine's measurements, in its own process and environment (`python -m bench.engines.probe --engine vllm`):
batched decode throughput with and without capture, and the cost of a prune followed by the next token. Prints one
JSON object per measurement on stdout; `bench.engines` runs it for each engine, interleaved over repeats."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import numpy as np

from bench.engines.workload import add_workload
from services.inference.engine import BatchEntry, Engine, EngineConfig, StepOutput

SEED = 20261208


def build(kind: str, threads: int, max_model_len: int, max_running: int) -> Engine:
    config = EngineConfig(threads=threads)
    if kind == "vllm":
        from services.inference.engine_vllm import VllmEngine, VllmOptions

        options = VllmOptions(max_running=max_running, max_model_len=max_model_len, kv_cache_bytes=1 << 30)
        return VllmEngine(config, options)  # type: ignore[return-value]  # the engine interface, duck-typed
    return Engine(config)


def next_token(out: StepOutput | None) -> int:
    assert out is not None
    if out.token is not None:
        return out.token
    assert out.logits is not None
    return int(out.logits.argmax())


def prompts(engine: Engine, n: int, tokens: int, seed: int) -> list[list[int]]:
    """Distinct prompts of random ordinary tokens: no request shares a prefix with another."""
    rng = np.random.default_rng(seed)
    return [[int(t) for t in rng.integers(100, engine.vocab_size - 100, size=tokens)] for _ in range(n)]


def batch(engine: Engine, n: int, capture: str | None, prompt_tokens: int, new_tokens: int, seed: int) -> dict:
    caches = [engine.new_cache() for _ in range(n)]
    started = time.perf_counter()
    outs = engine.forward(
        [
            BatchEntry(c, p, list(range(len(p))), capture)
            for c, p in zip(caches, prompts(engine, n, prompt_tokens, seed), strict=True)
        ]
    )
    prefilled = time.perf_counter()
    for _ in range(new_tokens):
        entries = [
            BatchEntry(c, [next_token(o)], [c.next_position], capture) for c, o in zip(caches, outs, strict=True)
        ]
        outs = engine.forward(entries)
    decoded = time.perf_counter()
    return {
        "prefill_s": prefilled - started,
        "decode_s": decoded - prefilled,
        "tokens_per_s": n * new_tokens / (decoded - prefilled),
    }


def prune(engine: Engine, context: int, count: int, where: str, seed: int) -> dict:
    """A conversation of `context` tokens decodes twice; then `count` positions go (scattered over the whole context,
    or all in its second half, "late") and the next token is timed, against a decode step with nothing pruned."""
    cache = engine.new_cache()
    ids = prompts(engine, 1, context, seed)[0]
    out = engine.forward([BatchEntry(cache, ids, list(range(context)), "mean")])[0]
    steps = []
    for _ in range(3):
        started = time.perf_counter()
        out = engine.forward([BatchEntry(cache, [next_token(out)], [cache.next_position], "mean")])[0]
        steps.append(time.perf_counter() - started)
    rng = np.random.default_rng(seed)
    first = 1 if where == "scattered" else context // 2
    drop = sorted(int(p) for p in rng.choice(np.arange(first, context - 1), size=count, replace=False))
    started = time.perf_counter()
    engine.evict(cache, drop)
    out = engine.forward([BatchEntry(cache, [next_token(out)], [cache.next_position], "mean")])[0]
    seconds = time.perf_counter() - started
    assert out is not None and out.attention is not None and len(out.attention) == context + 4 - count
    return {"prune_s": seconds, "step_s": float(np.median(steps)), "reused": getattr(cache, "reused", None)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.engines.probe", description=__doc__)
    p.add_argument("--engine", choices=["native", "vllm"], required=True)
    add_workload(p)
    p.add_argument("--seed", type=int, default=SEED)
    args = p.parse_args(argv)
    engine = build(args.engine, args.threads, args.prune_context + 64, max(args.concurrency))

    def emit(kind: str, row: dict[str, Any], **key: Any) -> None:
        print(json.dumps({"engine": args.engine, "kind": kind, **key, **row}), flush=True)

    # Warm-up (first forwards allocate and pick kernels), untimed.
    batch(engine, 2, "mean", 16, 2, args.seed + 1)
    for n in args.concurrency:
        captures: list[str | None] = ["mean"] if args.engine == "native" else ["mean", None]
        for capture in captures:
            row = batch(engine, n, capture, args.prompt_tokens, args.new_tokens, args.seed + n)
            emit("batch", row, concurrency=n, capture=capture or "off")
    for where in ("scattered", "late"):
        row = prune(engine, args.prune_context, args.prune_count, where, args.seed)
        emit("prune", row, where=where)
    return 0


if __name__ == "__main__":
    sys.exit(main())
