"""`python -m bench.quality [--quick]`: does pruning keep what matters? Every policy against the known ones.

Conversations generated from a seed (tasks.py: passkey in RULER's haystack and in varied filler, one fact of
several, variable tracking over turns, a fact a later turn updates) run through the worker engine's capture and the
tracker's scoring and pruning (runner.py), each under every policy at 25%, 50% and 75% of its length, plus no pruning
and the fact removed. For each: the fact kept or not, the greedy answer right or not, the answer's NLL and the NLL
gap closed; means with 95% bootstrap intervals and brightness paired against each other policy. Conversations are
spread over Ray actors (`--workers N`, or the cluster at RAY_ADDRESS). Writes bench/results/quality.json and the
figure docs/quality.png.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from services.tracker.settings import PRUNE_POLICIES

from . import plot, stats
from .runner import Policy
from .tasks import TASKS

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "bench" / "results" / "quality.json"
FIGURE = ROOT / "docs" / "quality.png"


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.quality", description=__doc__)
    p.add_argument("--quick", action="store_true", help="smoke run: 1 conversation per task, one budget (50%%)")
    p.add_argument("--tasks", nargs="+", choices=sorted(TASKS), help="default: all")
    p.add_argument("--policies", nargs="+", help="policy[:setting=value,...] (default: the five prune_policy values)")
    p.add_argument("--budgets", type=float, nargs="+", help="fractions of the conversation (default 0.25 0.5 0.75)")
    p.add_argument("--conversations", type=int, help="per task (default 100)")
    p.add_argument("--start", type=int, default=0, help="index of each task's first conversation (to extend a run)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=1, help="Ray actors (default 1)")
    p.add_argument("--threads", type=int, help="torch threads per actor (default: this machine's cores / workers)")
    p.add_argument("--generate", action="store_true", help="assistant turns generated greedily, not scripted")
    p.add_argument("--reply-tokens", type=int, default=32, help="with --generate: tokens per assistant turn")
    p.add_argument("--scaling", type=int, default=0, help="first time N conversations with 1 and with 2 workers")
    p.add_argument("--out", type=Path, help=f"results JSON (default {RESULTS.relative_to(ROOT)})")
    p.add_argument("--figure", type=Path, help=f"figure (default {FIGURE.relative_to(ROOT)})")
    p.add_argument(
        "--summarise", type=Path, nargs="+", metavar="JSON", help="no run: the tables and figures of results files"
    )
    p.add_argument("--markdown", action="store_true", help="with --summarise: the tables of docs/quality.md")
    args = p.parse_args(argv)
    args.tasks = args.tasks or list(TASKS)
    args.policies = args.policies or list(PRUNE_POLICIES)
    for spec in args.policies:
        Policy.parse(spec)  # a bad spec fails here, not in an actor
    args.budgets = args.budgets or ([0.5] if args.quick else [0.25, 0.5, 0.75])
    if not all(0 < b < 1 for b in args.budgets):
        p.error("--budgets: fractions strictly between 0 and 1")
    args.conversations = args.conversations or (1 if args.quick else 100)
    if args.quick:  # a smoke run must not overwrite the documented results
        scratch = Path(tempfile.mkdtemp(prefix="quality-quick-"))
        args.out = args.out or scratch / "quality.json"
        args.figure = args.figure or scratch / "quality.png"
    args.out = args.out or RESULTS
    args.figure = args.figure or FIGURE
    return args


class Pool:
    """N QualityWorker actors and the conversations handed to whichever is free."""

    def __init__(self, workers: int, threads: int, args: argparse.Namespace) -> None:
        import ray

        from .worker import QualityWorker

        remote = ray.remote(QualityWorker).options(num_cpus=threads, max_restarts=0)
        self.actors = [remote.remote(threads, args.generate, args.reply_tokens) for _ in range(workers)]
        self.where = ray.get([a.ready.remote() for a in self.actors])  # model loaded: timing starts after this

    def run(
        self, specs: list[tuple[str, int]], args: argparse.Namespace, progress: bool, partial: Path | None = None
    ) -> tuple[list[Any], float]:
        """Results of every conversation; with `partial`, the records so far are rewritten there after each one, so
        a long run that is stopped still leaves its data (`--summarise` reads it)."""
        from ray.util import ActorPool

        pool = ActorPool(self.actors)
        started = time.perf_counter()
        results = []
        jobs = pool.map_unordered(
            lambda actor, spec: actor.evaluate.remote(spec[0], spec[1], args.seed, args.policies, args.budgets),
            specs,
        )
        for done, result in enumerate(jobs, 1):
            results.append(result)
            if partial is not None:
                records = [r for result in results for r in result["records"]]
                partial.write_text(_json({"config": _config(args), "records": records}))
            if progress:
                elapsed = time.perf_counter() - started
                rate = done / elapsed * 60
                first = result["records"][0]
                print(
                    f"  [{done:4d}/{len(specs)}] {first['task']} #{first['index']}: {result['seconds']:.1f} s "
                    f"({rate:.1f} conversations/min, {(len(specs) - done) / rate:.0f} min left)",
                    flush=True,
                )
        return results, time.perf_counter() - started

    def close(self) -> None:
        import ray

        ray.get([a.close.remote() for a in self.actors])
        for actor in self.actors:
            ray.kill(actor)


def start_ray(cores: int) -> None:
    import logging

    import ray

    address = os.environ.get("RAY_ADDRESS")
    env = {"py_modules": [str(ROOT / "bench")]}  # this package, for actors on any node
    if address:
        ray.init(address=address, runtime_env=env, logging_level=logging.WARNING)
    else:
        ray.init(num_cpus=cores, include_dashboard=False, logging_level=logging.WARNING, runtime_env=env)


def scaling(args: argparse.Namespace, specs: list[tuple[str, int]], cores: int) -> dict[str, float]:
    """Conversations per minute with 1 and with 2 workers on the same conversations (the cores split between
    them), interleaved: 1, 2, 1, 2."""
    rates: dict[str, list[float]] = {"1": [], "2": []}
    for workers in (1, 2, 1, 2):
        pool = Pool(workers, max(1, cores // workers), args)
        try:
            _, seconds = pool.run(specs, args, progress=False)
        finally:
            pool.close()
        rates[str(workers)].append(len(specs) / seconds * 60)
        print(f"  {workers} worker(s): {rates[str(workers)][-1]:.2f} conversations/min", flush=True)
    return {k: sum(v) / len(v) for k, v in rates.items()}


def table(rows: list[dict[str, Any]]) -> str:
    def ci(cell: dict[str, Any], scale: float = 1.0, digits: int = 2) -> str:
        low, high = (scale * v for v in cell["ci"])
        return f"{scale * cell['mean']:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"

    lines = []
    head = (
        f"{'task':18} {'policy':30} {'budget':>6} {'n':>4} {'active':>6} {'kept %':>6} {'right %':>7} "
        f"{'NLL [95% CI]':>19} {'gap closed [95% CI]':>21} {'ΔNLL vs brightness (wins/losses)':>34}"
    )
    lines += [head, "-" * len(head)]
    for r in rows:
        budget = "-" if r["policy"] in stats.BASELINES else f"{100 * r['budget']:.0f}%"
        gap = ci(r["gap_closed"]) if "gap_closed" in r else ""
        paired = r.get("vs_brightness")
        versus = f"{ci(paired)} ({paired['a_better']}/{paired['b_better']})" if paired else ""
        lines.append(
            f"{r['task']:18} {r['policy']:30} {budget:>6} {r['n']:>4} {r['active_tokens']:>6.0f} "
            f"{100 * r['kept']['mean']:>6.0f} {100 * r['correct']['mean']:>7.0f} {ci(r['nll']):>19} {gap:>21} "
            f"{versus:>34}"
        )
    return "\n".join(lines)


def recall_table(rows: list[dict[str, Any]]) -> str:
    """Each policy with recall on against the same policy with it off: gap closed, answers right, the paired NLL
    difference (on − off: < 0, recall better) and what recall cost."""
    cells = {(r["task"], r["budget"], r["policy"]): r for r in rows}
    lines = []
    head = (
        f"{'task':18} {'policy':22} {'budget':>6} {'gap closed off → on':>21} {'right % off → on':>17} "
        f"{'ΔNLL on−off [95% CI] (on worse/better)':>42} {'recalled':>8} {'ms/probe':>8} {'cold MB':>7}"
    )
    lines += [head, "-" * len(head)]
    for r in rows:
        if "vs_recall_off" not in r:
            continue
        off = cells[(r["task"], r["budget"], stats.recall_base(r["policy"]))]
        d, cost = r["vs_recall_off"], r["recall_cost"]
        delta = f"{d['mean']:+.2f} [{d['ci'][0]:+.2f}, {d['ci'][1]:+.2f}] ({d['a_better']}/{d['b_better']})"
        lines.append(
            f"{r['task']:18} {off['policy']:22} {100 * r['budget']:>5.0f}% "
            f"{off['gap_closed']['mean']:>9.2f} → {r['gap_closed']['mean']:<9.2f} "
            f"{100 * off['correct']['mean']:>7.0f} → {100 * r['correct']['mean']:<7.0f} {delta:>42} "
            f"{cost['recalled_tokens']:>8.1f} {1000 * cost['seconds_per_probe']:>8.1f} {cost['cold_bytes'] / 1e6:>7.1f}"
        )
    return "\n".join(lines) if len(lines) > 2 else ""


def recall_markdown(rows: list[dict[str, Any]]) -> str:
    """docs/quality.md's recall tables: per task and budget, one column per policy, recall off → on."""
    cells = {(r["task"], r["budget"], r["policy"]): r for r in rows}
    on = [r for r in rows if "vs_recall_off" in r]
    if not on:
        return ""
    bases = sorted({str(stats.recall_base(r["policy"])) for r in on}, key=lambda p: (p != "brightness", p))
    keys = sorted({(r["task"], r["budget"]) for r in on})
    label = {stats.recall_base(r["policy"]): r["policy"] for r in on}

    def grid(title: str, cell: Any) -> list[str]:
        def value(task: str, budget: float, base: str) -> str:
            pair = (cells.get((task, budget, base)), cells.get((task, budget, label[base])))
            return cell(*pair) if None not in pair else ""

        return _grid(title, keys, bases, value)

    def gap(off: dict[str, Any], r: dict[str, Any]) -> str:
        g = r["gap_closed"]
        return f"{off['gap_closed']['mean']:.2f} → {g['mean']:.2f} [{g['ci'][0]:.2f}, {g['ci'][1]:.2f}]"

    def right(off: dict[str, Any], r: dict[str, Any]) -> str:
        return f"{100 * off['correct']['mean']:.0f} → {100 * r['correct']['mean']:.0f}"

    def delta(off: dict[str, Any], r: dict[str, Any]) -> str:
        d = r["vs_recall_off"]
        mark = "**" if d["ci"][0] > 0 or d["ci"][1] < 0 else ""  # the interval excludes 0
        return f"{mark}{d['mean']:+.2f}{mark} [{d['ci'][0]:+.2f}, {d['ci'][1]:+.2f}] ({d['b_better']}/{d['a_better']})"

    def cost(off: dict[str, Any], r: dict[str, Any]) -> str:
        c = r["recall_cost"]
        tokens, ms, megabytes = c["recalled_tokens"], 1000 * c["seconds_per_probe"], c["cold_bytes"] / 1e6
        return f"{tokens:.0f} tok · {ms:.0f} ms · {megabytes:.1f} MB"

    return "\n".join(
        [
            *grid("NLL gap closed, recall off → on [95% CI of on]", gap),
            "",
            *grid("answer right %, off → on", right),
            "",
            *grid("ΔNLL on − off [95% CI] (recall better / worse)", delta),
            "",
            *grid("recalled tokens · time per probed message · cold tier at the question", cost),
        ]
    )


def _grid(
    title: str, keys: list[tuple[str, float]], columns: list[str], value: Callable[[str, float, str], str]
) -> list[str]:
    """A markdown table: one row per (task, budget), one column per policy, each cell `value(task, budget, column)`."""
    lines = [f"| {title} | budget | " + " | ".join(f"`{c}`" for c in columns) + " |"]
    lines.append("|---|---|" + "---|" * len(columns))
    for task, budget in keys:
        cells = [value(task, budget, column) for column in columns]
        lines.append(f"| {task} | {100 * budget:.0f}% | " + " | ".join(cells) + " |")
    return lines


def _config(args: argparse.Namespace) -> dict[str, Any]:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}


def _json(output: dict[str, Any]) -> str:
    """Indented, but one line per conversation record: thousands of them stay readable and small."""
    records = output.pop("records")
    text = json.dumps(output, indent=1)[:-2]
    lines = ",\n  ".join(json.dumps(r, separators=(",", ":")) for r in records)
    return f'{text},\n "records": [\n  {lines}\n ]\n}}\n'


def figures(rows: list[dict[str, Any]], figure: Path, title: str) -> list[Path]:
    """The policies at `figure`; variants of a policy ("brightness:aggregation=max"), if any, with the policy they
    vary in a second figure next to it (`quality-variants.png`), so that neither is crowded. A run whose only
    variants are recall on draws every policy at `figure`, recall off solid and on dashed in the policy's colour."""
    labels = {r["policy"] for r in rows}
    variants = {label for label in labels if ":" in label}
    if variants and all(stats.recall_base(label) is not None for label in variants):
        plot.draw(rows, figure, title.replace("by pruning policy", "by policy, recall off and on"), by_base=True)
        return [figure]
    plot.draw(rows, figure, title, only=labels - variants)
    if not variants:
        return [figure]
    second = figure.with_name(f"{figure.stem}-variants{figure.suffix}")
    bases = {label.partition(":")[0] for label in variants}
    plot.draw(rows, second, title.replace("by pruning policy", "by variant"), only=variants | bases)
    return [figure, second]


def _title(records: list[dict[str, Any]], seed: int) -> str:
    conversations = len({(r["task"], r["index"]) for r in records})
    return f"NLL gap closed by pruning policy ({conversations} conversations, seed {seed})"


def markdown(rows: list[dict[str, Any]]) -> str:
    """The policies' tables, then their variants' (with brightness again) if the run had any."""
    labels = {r["policy"] for r in rows if "gap_closed" in r}
    variants = {label for label in labels if ":" in label}
    parts = [_markdown(rows, sorted(labels - variants, key=lambda p: (p != "brightness", p)))]
    if variants:
        parts.append(_markdown(rows, ["brightness", *sorted(variants)]))
    return "\n\n".join(parts)


def _markdown(rows: list[dict[str, Any]], policies: list[str]) -> str:
    """Per task and budget, one column per policy: the NLL gap closed with its interval, then kept % / right %, and
    brightness's paired NLL difference against each (the policy's minus brightness's: > 0, brightness better)."""
    cells = {(r["task"], r["budget"], r["policy"]): r for r in rows}
    keys = sorted({(r["task"], r["budget"]) for r in rows if "gap_closed" in r})

    def grid(title: str, cell: Any) -> list[str]:
        def value(task: str, budget: float, policy: str) -> str:
            return cell(cells[(task, budget, policy)]) if (task, budget, policy) in cells else ""

        return _grid(title, keys, policies, value)

    def gap(r: dict[str, Any]) -> str:
        g = r["gap_closed"]
        return f"{g['mean']:.2f} [{g['ci'][0]:.2f}, {g['ci'][1]:.2f}]"

    def kept(r: dict[str, Any]) -> str:
        return f"{100 * r['kept']['mean']:.0f} / {100 * r['correct']['mean']:.0f}"

    def versus(r: dict[str, Any]) -> str:
        v = r.get("vs_brightness")
        if v is None:
            return "—"
        mark = "**" if v["ci"][0] > 0 or v["ci"][1] < 0 else ""  # the interval excludes 0
        return f"{mark}{v['mean']:+.2f}{mark} ({v['a_better']}/{v['b_better']})"

    return "\n".join(
        [
            *grid("NLL gap closed [95% CI]", gap),
            "",
            *grid("fact kept % / answer right %", kept),
            "",
            *grid("ΔNLL vs brightness (brightness better / worse)", versus),
        ]
    )


def summarise_files(paths: list[Path], figure: Path, as_markdown: bool) -> int:
    """Several files are one run extended (`--start`): their records are pooled, conversation by conversation."""
    loaded = [json.loads(path.read_text()) for path in paths]
    if len({r["config"]["seed"] for r in loaded}) != 1:
        raise SystemExit("--summarise: the files come from different seeds; their conversations differ")
    seen: set[tuple[str, int, str, float]] = set()
    records = []
    for r in (r for results in loaded for r in results["records"]):
        key = (r["task"], r["index"], r["policy"], r["budget"])
        if key not in seen:
            seen.add(key)
            records.append(r)
    rows = stats.summarise(records)
    if as_markdown:
        print("\n\n".join(filter(None, [markdown(rows), recall_markdown(rows)])))
    else:
        print("\n\n".join(filter(None, [table(rows), recall_table(rows)])))
    drawn = figures(rows, figure, _title(records, loaded[0]["config"]["seed"]))
    print(f"wrote {', '.join(map(str, drawn))}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.summarise:
        return summarise_files(args.summarise, args.figure, args.markdown)
    cores = os.cpu_count() or 1
    threads = args.threads or max(1, cores // args.workers)
    indices = range(args.start, args.start + args.conversations)
    specs = [(task, i) for i in indices for task in args.tasks]  # tasks interleaved
    print(
        f"bench.quality: {len(specs)} conversations ({', '.join(args.tasks)}), policies {', '.join(args.policies)}, "
        f"budgets {', '.join(f'{100 * b:.0f}%' for b in args.budgets)}, {args.workers} worker(s) x {threads} "
        f"thread(s), {'generated' if args.generate else 'scripted'} assistant turns, seed {args.seed}",
        flush=True,
    )
    start_ray(cores)
    throughput: dict[str, float] = {}
    if args.scaling:
        print(f"scaling: {args.scaling} conversations with 1 and 2 workers", flush=True)
        throughput = scaling(args, specs[: args.scaling], cores)
    pool = Pool(args.workers, threads, args)
    partial = args.out.with_suffix(".partial.json")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    try:
        results, seconds = pool.run(specs, args, progress=True, partial=partial)
    finally:
        pool.close()
    records = sorted((r for result in results for r in result["records"]), key=lambda r: (r["task"], r["index"]))
    rows = stats.summarise(records)
    per_conversation = [result["seconds"] for result in results]
    print()
    print("\n\n".join(filter(None, [table(rows), recall_table(rows)])))
    rate = len(specs) / seconds * 60
    print(
        f"\n{len(specs)} conversations in {seconds / 60:.1f} min: {rate:.2f} conversations/min with "
        f"{args.workers} worker(s); per conversation {min(per_conversation):.1f}–{max(per_conversation):.1f} s"
    )
    for workers, value in throughput.items():
        print(f"scaling: {value:.2f} conversations/min with {workers} worker(s)")
    output = {
        "command": "python -m bench.quality " + " ".join(sys.argv[1:] if argv is None else argv),
        "config": _config(args),
        "machine": {"cores": cores, "python": platform.python_version(), "node": platform.node()},
        "conversations_per_minute": rate,
        "scaling_conversations_per_minute": throughput,
        "summary": rows,
        "records": records,
    }
    args.out.write_text(_json(output))
    partial.unlink(missing_ok=True)
    drawn = figures(rows, args.figure, _title(records, args.seed))
    print(f"wrote {args.out} and {', '.join(map(str, drawn))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
