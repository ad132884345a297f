"""`run_fuzzers(examples)`: every fuzzer against a system of its own, with the counts a benchmark reports."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.fuzz import rest, snapshot, tracker, websocket
from bench.fuzz.explore import explore
from bench.fuzz.tally import Tally
from bench.fuzz.target import Target, running

FUZZERS = ("websocket", "rest", "tracker-grpc", "snapshot-grpc")


def run_fuzzers(
    examples: int,
    only: tuple[str, ...] = FUZZERS,
    workdir: Path | None = None,
    progress: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """Starts Redis, the tracker, the snapshot service and the gateway (private ports and directory), runs each
    fuzzer for `examples` generated inputs (scripts of frames for the WebSocket, requests per operation for REST,
    calls for the gRPC servers) and returns one row per fuzzer: {fuzzer, inputs, crashes, refusals, accepted}.

    Nothing is raised for a crash: it is counted, and the search goes on (`tallies` keeps one example of each)."""
    return [t.row() for t in run_tallies(examples, only, workdir, progress)]


def run_tallies(
    examples: int,
    only: tuple[str, ...] = FUZZERS,
    workdir: Path | None = None,
    progress: Callable[[str], None] | None = None,
) -> list[Tally]:
    unknown = set(only) - set(FUZZERS)
    if unknown:
        raise ValueError(f"unknown fuzzers {sorted(unknown)}; known: {', '.join(FUZZERS)}")
    with tempfile.TemporaryDirectory(prefix="haloweave-fuzz-") as scratch, running(workdir or Path(scratch)) as target:
        tallies = []
        for name in only:
            if progress is not None:
                progress(f"fuzzing {name} ({examples} examples)")
            tallies.append(_run_one(name, target, examples))
        return tallies


def _run_one(name: str, target: Target, examples: int) -> Tally:
    if name == "websocket":
        victim = websocket.new_victim(target)
        ws = websocket.WebSocketFuzzer(target, victim)
        try:
            explore(websocket.scripts(victim), ws.run, examples, strict=False)
        finally:
            ws.close()
        return ws.tally
    if name == "rest":
        owner = websocket.new_victim(target)
        api = rest.RestFuzzer(target, owner)
        try:
            for strategy in rest.operations(rest.load_schema(target), owner).values():
                explore(strategy, api.run, examples, strict=False)
        finally:
            api.close()
        return api.tally
    if name == "tracker-grpc":
        grpc_tracker = tracker.TrackerFuzzer(target)
        try:
            explore(tracker.calls(), grpc_tracker.run, examples, strict=False)
        finally:
            grpc_tracker.close()
        return grpc_tracker.tally
    grpc_snapshot = snapshot.SnapshotFuzzer(target)
    try:
        explore(snapshot.calls(), grpc_snapshot.run, examples, strict=False)
    finally:
        grpc_snapshot.close()
    return grpc_snapshot.tally
