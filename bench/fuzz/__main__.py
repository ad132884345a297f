"""`python -m bench.fuzz [--examples N] [--only NAME ...]`: fuzz every server, print what each fuzzer counted.

Writes bench/results/fuzz.json (the rows, and one example of each kind of crash found)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from bench.fuzz.runner import FUZZERS, run_tallies

RESULTS = Path(__file__).resolve().parents[1] / "results" / "fuzz.json"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--examples", type=int, default=100, help="generated inputs per fuzzer (per operation: REST)")
    parser.add_argument("--quick", action="store_true", help="20 examples each")
    parser.add_argument("--only", nargs="+", choices=FUZZERS, default=list(FUZZERS))
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.quick:
        args.examples = 20
    started = time.monotonic()
    tallies = run_tallies(args.examples, tuple(args.only), progress=lambda line: print(line, flush=True))
    print(f"\n{'fuzzer':<15}{'inputs':>8}{'crashes':>9}{'refusals':>10}{'accepted':>10}")
    for tally in tallies:
        print(f"{tally.fuzzer:<15}{tally.inputs:>8}{tally.crashes:>9}{tally.refusals:>10}{tally.accepted:>10}")
    for tally in tallies:
        for detail in tally.details:
            print(f"\n{tally.fuzzer} crash: {detail[:2000]}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "examples": args.examples,
        "seconds": round(time.monotonic() - started, 1),
        "rows": [t.row() for t in tallies],
        "crashes": {t.fuzzer: t.details for t in tallies},
    }
    args.out.write_text(json.dumps(payload, indent=1))
    return 1 if any(t.crashes for t in tallies) else 0


if __name__ == "__main__":
    sys.exit(main())
