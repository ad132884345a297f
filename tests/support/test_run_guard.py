"""The run guard, in a pytest run of its own: a hung test ends the run with every stack, a spent budget stops it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CONFTEST = "from tests.support import run_guard\n\n\ndef pytest_configure(config):\n    run_guard.install(config)\n"


def run_pytest(folder: Path, tests: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    (folder / "conftest.py").write_text(CONFTEST)
    (folder / "test_guarded.py").write_text(tests)
    command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--timeout=1", "--rootdir", str(folder)]
    environment = {**os.environ, "PYTHONPATH": str(ROOT), **env}
    return subprocess.run(
        [*command, str(folder)], cwd=folder, env=environment, capture_output=True, text=True, timeout=120
    )


def test_a_test_its_time_out_cannot_interrupt_ends_the_run_with_the_stacks(tmp_path: Path) -> None:
    # SIGALRM blocked: pytest-timeout's signal never arrives, as when the main thread is stuck in C code.
    tests = (
        "import signal, time\n\n"
        "def test_hangs():\n"
        "    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})\n"
        "    time.sleep(60)\n\n"
        "def test_never_reached():\n"
        "    pass\n"
    )
    done = run_pytest(tmp_path, tests, {"HALOWEAVE_TEST_HANG_GRACE_S": "1"})
    assert done.returncode == 3, done.stdout + done.stderr
    assert "test_hangs is still running" in done.stderr
    assert "in test_hangs" in done.stderr  # the hung test's own frame is in the dump
    assert "test_never_reached" not in done.stdout + done.stderr


def test_a_spent_budget_stops_the_run_and_fails_it_with_its_summary(tmp_path: Path) -> None:
    tests = "import time\n\ndef test_first():\n    time.sleep(0.2)\n\ndef test_second():\n    pass\n"
    done = run_pytest(tmp_path, tests, {"HALOWEAVE_TEST_BUDGET_S": "0.1"})
    assert done.returncode == 1, done.stdout + done.stderr
    assert "stopped: the run has used its budget" in done.stdout
    assert "1 passed" in done.stdout  # the second test did not run, and the summary is still printed
