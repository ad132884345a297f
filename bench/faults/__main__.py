"""`python -m bench.faults`: every fault × outcomes × recovery time (see bench/faults/__init__.py)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.faults import Table
from tests.support.faults import NO_FAULT, OUTCOMES, Fault, Result, faults, run_fault, summary, supervised_stack

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "bench" / "results" / "faults.json"


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.faults", description=__doc__)
    p.add_argument("--repeats", type=int, default=3, help="rounds of each fault (default 3)")
    p.add_argument("--quick", action="store_true", help="stalls of 8 s instead of 30 s")
    p.add_argument("--sessions", type=int, default=3, help="conversations in flight at each fault (default 3)")
    p.add_argument("--only", nargs="+", metavar="FAULT", help="run only these faults (names as in the table)")
    p.add_argument("--claim-idle-ms", type=int, help="HALOWEAVE_CLAIM_IDLE_MS for the workers (default theirs)")
    p.add_argument("--workers", type=int, default=1, help="inference worker actors (default 1; 2: one stays idle)")
    p.add_argument("--strike-after", type=int, default=2, metavar="N", help="strike once each reply showed N tokens")
    p.add_argument("--max-new-tokens", type=int, help="reply length (default the harness's 48)")
    p.add_argument("--out", type=Path, default=RESULTS)
    return p.parse_args(argv)


def chosen(args: argparse.Namespace) -> list[Fault]:
    every = {NO_FAULT.name: NO_FAULT, **faults(8.0 if args.quick else 30.0)}
    if not args.only:
        return list(every.values())
    unknown = [name for name in args.only if name not in every]
    if unknown:
        raise SystemExit(f"unknown faults {unknown}; known: {', '.join(every)}")
    return [every[name] for name in args.only]


def fault_table(runs: dict[str, list[Result]]) -> Table:
    table = Table(
        "Faults: the replies in flight when the fault came (counts over every repeat), and the next message after it",
        ["fault", "replies", *OUTCOMES, "then completed", "recovery median s", "max s", "spread s", "back s"],
    )
    for name, results in runs.items():
        s = summary(results)
        table.rows.append(
            [
                name,
                sum(len(r.outcomes) for r in results),
                *(s["counts"][kind] for kind in OUTCOMES),
                f"{s['after']['completed once']}/{sum(len(r.after) for r in results)}",
                s["recovery_median_s"],
                s["recovery_max_s"],
                s["recovery_spread_s"],
                s["back_median_s"],
            ]
        )
    table.notes = [
        "recovery: fault → first token delivered after it (or → the clear error); back: fault → the process serves",
        "again (supervisor restart, Ray's new actor, end of the stall); spread: slowest − fastest recovery of the row",
    ]
    return table


# Each makes one table from the run: {fault name: its results}. Add yours here.
TABLES: list[Callable[[dict[str, list[Result]]], Table]] = [fault_table]


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    selected = chosen(args)
    env = {"HALOWEAVE_CLAIM_IDLE_MS": str(args.claim_idle_ms)} if args.claim_idle_ms else None
    print(
        f"bench.faults: {len(selected)} faults × {args.repeats} repeats, {args.sessions} conversations each, "
        f"{args.workers} worker(s)",
        flush=True,
    )
    runs: dict[str, list[Result]] = {fault.name: [] for fault in selected}
    began, started_load = time.monotonic(), os.getloadavg()[0]
    settings = {"max_new_tokens": args.max_new_tokens} if args.max_new_tokens else None
    workdir_context = tempfile.TemporaryDirectory(prefix="hw-faults-")
    with workdir_context as workdir, supervised_stack(Path(workdir), env, workers=args.workers) as stack:
        print(f"  stack up in {time.monotonic() - began:.0f} s", flush=True)
        for repeat in range(args.repeats):
            for fault in selected:
                result = run_fault(stack, fault, args.sessions, settings, strike_after=args.strike_after)
                runs[fault.name].append(result)
                counts = ", ".join(f"{n} {kind}" for kind, n in result.counts().items() if n)
                print(f"  {repeat + 1}/{args.repeats} {fault.name}: {counts} ({result.took_s:.0f} s)", flush=True)
    load = f"{started_load:.1f} → {os.getloadavg()[0]:.1f}"
    tables = [make(runs) for make in TABLES]
    contexts = sorted(size for results in runs.values() for r in results for size in r.contexts_at_fault())
    if contexts:
        span = f"{contexts[0]}" if contexts[0] == contexts[-1] else f"{contexts[0]}–{contexts[-1]}"
        tables[0].notes.append(
            f"{args.workers} worker(s); faults struck after {args.strike_after} reply tokens, with {span} tokens "
            "in each conversation's context"
        )
    tables[0].notes.append(f"load average (1 min) at the start and at the end: {load} on {os.cpu_count()} cores")
    for table in tables:
        print("\n" + table.render())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    output: dict[str, Any] = {
        "command": "python -m bench.faults " + " ".join(sys.argv[1:] if argv is None else argv),
        "tables": [table.to_json() for table in tables],
        "runs": {
            name: [{"outcomes": [o.kind for o in r.outcomes], "details": r.describe()} for r in results]
            for name, results in runs.items()
        },
    }
    args.out.write_text(json.dumps(output, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
