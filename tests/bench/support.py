"""Running a benchmark as `make bench` does, for the benches' smoke tests: its own process, from the repository root."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run_bench(name: str, *args: str, timeout: float) -> str:
    """`python -m bench.<name> args`; its stdout, or the failure with the tail of both streams."""
    command = [sys.executable, "-m", f"bench.{name}", *args]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout
