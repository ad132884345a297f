"""Hostile input for the gateway (WebSocket and REST), the tracker and the snapshot service, fuzzed with hypothesis
and schemathesis against real processes; `run_fuzzers(examples)` returns what each fuzzer counted.

The same fuzzers run under test in tests/fuzz, where the first crash fails (shrunk to a minimal input).
"""

from bench.fuzz.runner import FUZZERS, run_fuzzers

__all__ = ["FUZZERS", "run_fuzzers"]
