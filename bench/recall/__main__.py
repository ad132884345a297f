"""`python -m bench.recall [--quick]`: what recall costs a worker, against the work it sits beside.

Per decode step, recall on changes one thing: an eviction copies the evicted slots to the cold tier on the host before
compacting (`evict to cold` ÷ `evict in place`). Per user message it adds the probe (scoring the cold tier against
the message's queries), the re-insertion of what comes back, and one more forward of the prompt's last token; the
table compares that with the decode step and with the prompt's own prefill measured in the same run. The cold tier
costs `Engine.kv_bytes_per_token` per pruned token, on the host. Approaches are interleaved over repeats; medians.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from services.inference.engine import BatchEntry, Engine, EngineConfig

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "bench" / "results" / "recall.json"
SENTENCE = 16  # tokens in the sentence evicted and recalled
PROMPT = 48  # tokens in a user message and the header after it
PROBES = 32  # the message's text tokens whose queries probe
AGAIN = "prompt's last token again"


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.recall", description=__doc__)
    p.add_argument("--quick", action="store_true", help="one context, three repeats")
    p.add_argument("--contexts", type=int, nargs="+", help="hot tokens (default 1024 2048)")
    p.add_argument("--cold", type=int, nargs="+", help="cold tokens (default 256 1024)")
    p.add_argument("--repeats", type=int, help="interleaved repeats (default 5)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    args.contexts = args.contexts or ([512] if args.quick else [1024, 2048])
    args.cold = args.cold or ([128] if args.quick else [256, 1024])
    args.repeats = args.repeats or (3 if args.quick else 5)
    return args


def measure(engine: Engine, hot: int, cold: int, rng: np.random.Generator) -> dict[str, float]:
    """One repeat of every operation on a fresh cache of `hot` tokens whose cold tier holds `cold`."""
    vocab = min(engine.vocab_size, len(engine.tokenizer))
    ids = [int(t) for t in rng.integers(100, vocab, hot + cold + PROMPT)]
    cache = engine.new_cache()
    engine.prefill(cache, ids[: hot + cold], list(range(hot + cold)), capture=None)
    # The cold tier: the sentences after the first, evicted to the host one by one (a chunk each, as pruning does).
    sentences = [list(range(s, s + SENTENCE)) for s in range(SENTENCE, SENTENCE + cold, SENTENCE)]
    for sentence in sentences:
        engine.evict(cache, sentence, cold=True)
    times: dict[str, float] = {}
    start = hot + cold
    positions = list(range(start, start + PROMPT))

    def timed(name: str, fn: Any, *a: Any, **k: Any) -> Any:
        began = time.perf_counter()
        out = fn(*a, **k)
        times[name] = time.perf_counter() - began
        return out

    probe = tuple(range(PROMPT - PROBES - 4, PROMPT - 4))  # the text, before the template's trailer and header
    entry = BatchEntry(cache, ids[start : start + PROMPT], positions, capture="mean", probe=probe)
    out = timed("prompt prefill (with probe)", engine.forward, [entry])[0]
    assert out is not None and out.probe is not None
    timed("probe: score the cold tier", engine.recall_scores, cache, out.probe, "mean")
    chunk = cache.cold.take(set(sentences[0]))
    assert chunk is not None
    timed("re-insert one sentence", engine.reinsert, cache, chunk)
    last_id, last_position = cache.token_ids[-1], cache.positions[-1]
    cache.truncate(len(cache) - 1)
    timed(AGAIN, engine.decode, cache, last_id, last_position, "mean")
    # Two hot sentences right after the cold region (so nearly every slot moves): one evicted as with recall off,
    # one as with it on.
    tail = [p for p in cache.positions if SENTENCE + cold <= p < hot + cold]
    timed("evict in place", engine.evict, cache, tail[:SENTENCE])
    timed("evict to cold", engine.evict, cache, tail[SENTENCE : 2 * SENTENCE], cold=True)
    timed("decode step", engine.decode, cache, 42, cache.next_position, "mean")
    times["cold bytes"] = float(cache.cold.nbytes)
    return times


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    engine = Engine(EngineConfig(threads=args.threads))
    rng = np.random.default_rng(0)
    print(
        f"bench.recall: {engine.model_name} on {engine.device} {engine.dtype}, {torch.get_num_threads()} threads; "
        f"{args.repeats} interleaved repeats; a {SENTENCE}-token sentence, a {PROMPT}-token prompt probed by "
        f"{PROBES} queries; {engine.kv_bytes_per_token} cold bytes per token",
        flush=True,
    )
    cells = [(h, c) for h in args.contexts for c in args.cold]
    samples: dict[tuple[int, int], list[dict[str, float]]] = {cell: [] for cell in cells}
    measure(engine, 128, 32, rng)  # warm-up: first-call allocations
    for r in range(args.repeats):
        for cell in cells[r % len(cells) :] + cells[: r % len(cells)]:
            samples[cell].append(measure(engine, *cell, rng))
        print(f"  repeat {r + 1}/{args.repeats}", flush=True)
    rows = []
    head = (
        f"{'hot':>5} {'cold':>5} {'decode ms':>9} {'evict ms':>8} {'to cold ms':>10} {'to cold ÷ in place':>18} "
        f"{'probe ms':>8} {'reinsert ms':>11} {'again ms':>8} {'per message ms':>14} {'÷ prompt prefill':>16} "
        f"{'spread':>6} {'cold MB':>7}"
    )
    print("\n" + head + "\n" + "-" * len(head))
    for hot, cold in cells:
        s = samples[(hot, cold)]

        def med(name: str, runs: list[dict[str, float]] = s) -> float:
            return statistics.median(run[name] for run in runs)

        message = med("probe: score the cold tier") + med("re-insert one sentence") + med(AGAIN)
        decodes = [run["decode step"] for run in s]
        row = {
            "hot": hot,
            "cold": cold,
            **{name: med(name) for name in s[0]},
            "per_message_s": message,
            "to_cold_vs_in_place": med("evict to cold") / med("evict in place"),
            "per_message_vs_prompt_prefill": message / med("prompt prefill (with probe)"),
            "decode_spread": max(decodes) / min(decodes),  # how noisy the machine was
        }
        rows.append(row)
        print(
            f"{hot:>5} {cold:>5} {1000 * med('decode step'):>9.1f} {1000 * med('evict in place'):>8.2f} "
            f"{1000 * med('evict to cold'):>10.2f} {row['to_cold_vs_in_place']:>18.2f} "
            f"{1000 * med('probe: score the cold tier'):>8.1f} {1000 * med('re-insert one sentence'):>11.2f} "
            f"{1000 * med(AGAIN):>8.1f} {1000 * message:>14.1f} "
            f"{row['per_message_vs_prompt_prefill']:>16.2f} {row['decode_spread']:>6.2f} "
            f"{row['cold bytes'] / 1e6:>7.1f}"
        )
    print("spread: slowest ÷ fastest decode step over the repeats (how noisy this run was)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    output = {"command": "python -m bench.recall " + " ".join(sys.argv[1:] if argv is None else argv), "rows": rows}
    args.out.write_text(json.dumps(output, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
