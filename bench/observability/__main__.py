"""`python -m bench.observability [--quick]`: what watching Halo Weave costs.

1. Generation with a real Prometheus scraping all four services every second (a scrape interval fifteen times
   shorter than the deployments' 15 s, to make any cost visible) versus no scraping (the baseline), interleaved over
   the repeats in this one run: tokens/s and wall time of one chat turn of a fixed greedy reply.
2. The cost of one scrape of each service's /metrics: median latency and size of the answer.

Prints the tables; writes bench/results/observability.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench.observability.prometheus import scraping
from devstack.stack import Stack
from tests.support.chat_client import ChatClient

RESULTS = Path(__file__).resolve().parents[1] / "results" / "observability.json"
PROMPT = "Write three sentences about the sea."


def chat_turn(stack: Stack, max_new_tokens: int) -> dict[str, float]:
    """One new session, one greedy reply of `max_new_tokens`: its tokens/s (worker-side) and wall seconds."""
    with ChatClient(stack.ws_url) as client:
        client.hello()
        client.send({"type": "settings", "settings": {"max_new_tokens": max_new_tokens, "temperature": 0.0}})
        client.recv_until(lambda f: f["type"] in ("settings", "error"))
        started = time.perf_counter()
        frames = client.chat(PROMPT)
        wall = time.perf_counter() - started
    done = frames[-1]
    if done["type"] != "done":
        raise RuntimeError(f"the chat failed: {done}")
    stats = done["stats"]
    return {"tokens": stats["tokens"], "tokens_per_s": stats["tokens_per_s"], "wall_s": wall}


def generation_under_scraping(
    stack: Stack, workdir: Path, repeats: int, max_new_tokens: int, interval_s: float
) -> dict[str, Any]:
    runs: dict[str, list[dict[str, float]]] = {"baseline": [], "scraped": []}
    chat_turn(stack, max_new_tokens)  # warm-up: the first reply pays for the worker's first allocations
    for repeat in range(repeats):
        for mode in ("baseline", "scraped") if repeat % 2 == 0 else ("scraped", "baseline"):
            if mode == "scraped":
                with scraping(stack.metrics_urls, workdir / "prometheus", interval_s):
                    runs[mode].append(chat_turn(stack, max_new_tokens))
            else:
                runs[mode].append(chat_turn(stack, max_new_tokens))
            last = runs[mode][-1]
            print(f"  repeat {repeat + 1} {mode:<8} {last['tokens_per_s']:6.2f} tokens/s  {last['wall_s']:6.2f} s")
    summary = {
        mode: {
            "tokens_per_s": statistics.median(r["tokens_per_s"] for r in results),
            "wall_s": statistics.median(r["wall_s"] for r in results),
        }
        for mode, results in runs.items()
    }
    return {"interval_s": interval_s, "max_new_tokens": max_new_tokens, "runs": runs, "median": summary}


def scrape_cost(stack: Stack, scrapes: int) -> dict[str, dict[str, float]]:
    out = {}
    with httpx.Client(timeout=10) as client:
        for service, url in sorted(stack.metrics_urls.items()):
            times, size = [], 0
            for _ in range(scrapes):
                started = time.perf_counter()
                size = len(client.get(url).content)
                times.append(time.perf_counter() - started)
            out[service] = {"median_ms": statistics.median(times) * 1000, "bytes": size}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 repeats of 12-token replies instead of 4 of 32")
    args = parser.parse_args(argv)
    repeats, tokens, scrapes = (2, 12, 10) if args.quick else (4, 32, 30)
    with tempfile.TemporaryDirectory(prefix="bench-observability-") as tmp:
        workdir = Path(tmp)
        print("starting the services (the model loads: about a minute)...", flush=True)
        with Stack(workdir=workdir / "stack") as stack:
            print(f"generation, {repeats} repeats of {tokens} tokens, scraped every 1 s vs not scraped:", flush=True)
            generation = generation_under_scraping(stack, workdir, repeats, tokens, 1.0)
            cost = scrape_cost(stack, scrapes)

    base, scraped = generation["median"]["baseline"], generation["median"]["scraped"]
    runs = generation["runs"]

    def spread(mode: str, key: str) -> str:
        values = [run[key] for run in runs[mode]]
        return f"{min(values):.2f}-{max(values):.2f}"

    # The ratio means something only where it falls outside the run-to-run spread, so the spread is printed too.
    print("\n| measure (median; min-max) | no scraping (baseline) | scraped every 1 s | ratio |")
    print("|---|---|---|---|")
    for key, label in (("tokens_per_s", "tokens/s"), ("wall_s", "turn wall time, s")):
        print(
            f"| {label} | {base[key]:.2f} ({spread('baseline', key)}) | {scraped[key]:.2f} ({spread('scraped', key)})"
            f" | {scraped[key] / base[key]:.3f} |"
        )
    print("\n| service | one scrape of /metrics, ms (median) | bytes |")
    print("|---|---|---|")
    for service, row in cost.items():
        print(f"| {service} | {row['median_ms']:.2f} | {row['bytes']} |")

    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "benchmark": "observability",
                "quick": args.quick,
                "machine": {"platform": platform.platform(), "python": platform.python_version()},
                "generation": generation,
                "scrape_cost": cost,
            },
            indent=2,
        )
    )
    print(f"\nwrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
