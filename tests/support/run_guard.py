"""What a long test run tells as it goes, and how it ends when something hangs.

CI allows the whole `make test` a fixed time and shows only what the run printed, so a run that is cut off must
already have said where its time went:
- every test phase that takes longer than `SLOW_S` is reported at once, with the run's elapsed time;
- a test that outlives pytest-timeout's limit by a grace time (`HALOWEAVE_TEST_HANG_GRACE_S`, 60 s; the limit's
  SIGALRM cannot interrupt a main thread blocked in C code) has every thread's stack dumped and the run ended,
  instead of the run hanging until CI kills it;
- once the run has used `HALOWEAVE_TEST_BUDGET_S` (default 75 min), it stops after the current test and fails, so
  the summary and the slowest durations are still printed.
"""

from __future__ import annotations

import faulthandler
import os
import sys
import threading
import time
from collections.abc import Generator
from typing import Any

import pytest
import pytest_timeout

SLOW_S = 20.0
DEFAULT_GRACE_S = 60.0
DEFAULT_BUDGET_S = 75 * 60.0


class RunGuard:
    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.started = time.monotonic()
        self.budget_s = float(os.environ.get("HALOWEAVE_TEST_BUDGET_S", DEFAULT_BUDGET_S))
        self.grace_s = float(os.environ.get("HALOWEAVE_TEST_HANG_GRACE_S", DEFAULT_GRACE_S))
        self.over_budget = False

    def elapsed(self) -> str:
        seconds = int(time.monotonic() - self.started)
        return f"{seconds // 60}m{seconds % 60:02d}s"

    def say(self, line: str) -> None:
        reporter = self.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            if reporter.verbosity < 0:  # -q writes its dots with no file name, which ensure_newline looks for
                reporter.write("\n")
            reporter.ensure_newline()
            reporter.write_line(line, yellow=True)

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_protocol(self, item: pytest.Item) -> Generator[None, Any, None]:
        # pytest-timeout's own reading of the limit (marker, --timeout, PYTEST_TIMEOUT, ini), so the two never differ.
        limit = pytest_timeout._get_item_settings(item).timeout
        watchdog = None
        if limit:
            watchdog = threading.Timer(limit + self.grace_s, self.hung, args=(item.nodeid, limit))
            watchdog.daemon = True
            watchdog.start()
        try:
            yield
        finally:
            if watchdog is not None:
                watchdog.cancel()
        if time.monotonic() - self.started > self.budget_s and not self.over_budget:
            self.over_budget = True
            item.session.shouldstop = f"the run has used its budget of {self.budget_s / 60:.0f} min"

    def hung(self, nodeid: str, limit: float) -> None:
        capture = self.config.pluginmanager.getplugin("capturemanager")
        if capture is not None:  # the test's output is captured into files; the dump must reach the console
            capture.suspend_global_capture(in_=True)
        sys.stderr.write(
            f"\n[{self.elapsed()}] {nodeid} is still running {self.grace_s:.0f} s after its {limit:.0f} s time-out "
            "could not interrupt it; the stacks of every thread follow and the run ends here.\n"
        )
        faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
        sys.stderr.flush()
        os._exit(3)

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.duration >= SLOW_S:
            self.say(f"[{self.elapsed()}] slow: {report.duration:.1f} s {report.when} {report.nodeid}")

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if self.over_budget:
            self.say(f"[{self.elapsed()}] stopped: {session.shouldstop}; the tests after it did not run")
            session.exitstatus = pytest.ExitCode.TESTS_FAILED


def install(config: pytest.Config) -> None:
    config.pluginmanager.register(RunGuard(config), "haloweave-run-guard")
