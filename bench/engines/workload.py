"""The workload both engines run, one definition for `bench.engines` (which takes these options) and each probe (to
which it hands them on). No heavy imports: the orchestrator itself never loads torch."""

from __future__ import annotations

import argparse

# The workload, the same for both engines: `bench.engines` takes these options and hands them on to each probe.
WORKLOAD: dict[str, int | list[int]] = {
    "threads": 2,
    "concurrency": [1, 8, 16],
    "prompt_tokens": 128,
    "new_tokens": 32,
    "prune_context": 1024,
    "prune_count": 256,
}


def add_workload(p: argparse.ArgumentParser) -> None:
    for name, default in WORKLOAD.items():
        flag = "--" + name.replace("_", "-")
        if isinstance(default, list):
            p.add_argument(flag, type=int, nargs="+", default=default)
        else:
            p.add_argument(flag, type=int, default=default)


def workload_argv(args: argparse.Namespace) -> list[str]:
    """The workload options of `args` as a probe's command line."""
    argv: list[str] = []
    for name in WORKLOAD:
        value = getattr(args, name)
        argv += ["--" + name.replace("_", "-"), *map(str, value if isinstance(value, list) else [value])]
    return argv
