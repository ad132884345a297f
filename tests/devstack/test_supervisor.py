"""The supervisor behind `make run`: tiny child processes that exit are started again with back-off; stop ends all."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import replace
from pathlib import Path

import psutil
import pytest

from devstack.procs import Proc, wait_until
from devstack.supervisor import Backoff, Service, Supervisor, describe_exit

ROOT = Path(__file__).resolve().parents[2]
QUICK = Backoff(first_s=0.1, cap_s=0.4, reset_after_s=30)


def child(tmp_path: Path, name: str, code: str, before_ready: str = "") -> Service:
    """A service whose process runs `before_ready`, writes its pid to `<name>.pid` (which makes it ready), then runs
    `code`."""
    pid_file = tmp_path / f"{name}.pid"
    ready = f"pathlib.Path({str(pid_file)!r}).write_text(str(os.getpid()))"
    script = f"import os, pathlib, sys, time\n{before_ready}{ready}\n{code}"

    def spawn() -> Proc:
        pid_file.unlink(missing_ok=True)
        return Proc(name, [sys.executable, "-c", script], {}, tmp_path / f"{name}.log")

    return Service(name, spawn, pid_file.exists, start_timeout_s=20)


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_backoff_doubles_to_its_cap() -> None:
    assert [Backoff().delay(n) for n in range(1, 8)] == [0.5, 1, 2, 4, 8, 10, 10]


def test_exits_are_described_by_signal_name() -> None:
    assert describe_exit(-9) == "-9 (SIGKILL)"
    assert describe_exit(-15) == "-15 (SIGTERM)"
    assert describe_exit(3) == "3"


def test_a_killed_child_is_started_again_with_the_same_command(tmp_path: Path) -> None:
    said: list[str] = []
    supervisor = Supervisor([child(tmp_path, "sleeper", "time.sleep(60)")], backoff=QUICK, say=said.append)
    supervisor.start()
    try:
        first = supervisor.procs["sleeper"].pid
        killed_at = time.monotonic()
        os.kill(first, signal.SIGKILL)
        back = supervisor.wait_back("sleeper", killed_at, timeout=20)
        assert back.pid != first and supervisor.procs["sleeper"].alive()
        assert supervisor.restarts["sleeper"] == 1
        exited = [line for line in said if line.startswith("sleeper exited with -9 (SIGKILL)")]
        assert len(exited) == 1 and exited[0].endswith("restarting in 0.1 s (restart 1)")
        assert any(line.startswith("sleeper is back after") for line in said)
    finally:
        supervisor.stop()


def test_a_crash_loop_backs_off_exponentially(tmp_path: Path) -> None:
    said: list[str] = []
    crasher = child(tmp_path, "crasher", "time.sleep(0.05)\nsys.exit(3)")
    supervisor = Supervisor([crasher], backoff=QUICK, say=said.append)
    supervisor.start()
    try:
        wait_until(lambda: supervisor.restarts["crasher"] >= 5, 30, "five restarts")
    finally:
        supervisor.stop()
    exits = [event for event in supervisor.history if event.what == "exited"]
    assert all(event.detail == "3" for event in exits)
    delays = [line.split("restarting in ")[1].split(" s")[0] for line in said if "restarting in" in line]
    assert delays[:5] == ["0.1", "0.2", "0.4", "0.4", "0.4"]
    gaps = [later.at - earlier.at for earlier, later in itertools.pairwise(exits)]
    assert gaps[1] > gaps[0] + 0.05, "the second wait is longer than the first"


def test_a_run_that_lasted_resets_the_backoff(tmp_path: Path) -> None:
    said: list[str] = []
    backoff = Backoff(first_s=0.1, cap_s=5, reset_after_s=0.3)
    supervisor = Supervisor([child(tmp_path, "steady", "time.sleep(0.5)")], backoff=backoff, say=said.append)
    supervisor.start()
    try:
        wait_until(lambda: supervisor.restarts["steady"] >= 3, 30, "three restarts")
    finally:
        supervisor.stop()
    delays = [line.split("restarting in ")[1].split(" s")[0] for line in said if "restarting in" in line]
    assert delays[:3] == ["0.1", "0.1", "0.1"]


def test_stop_ends_every_process_and_restarts_nothing(tmp_path: Path) -> None:
    # The second child has a child of its own, in its process group: it goes too.
    grandchild = "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\ntime.sleep(60)"
    services = [
        child(tmp_path, "one", "time.sleep(60)"),
        child(tmp_path, "two", f"import subprocess\n{grandchild}"),
    ]
    supervisor = Supervisor(services, backoff=QUICK).start()
    pids = [proc.pid for proc in supervisor.procs.values()]
    wait_until(lambda: bool(psutil.Process(pids[1]).children()), 10, "the grandchild")
    pids += [p.pid for p in psutil.Process(pids[1]).children()]
    supervisor.stop()
    assert all(gone(pid) for pid in pids)
    time.sleep(0.5)
    assert supervisor.procs == {} and all(count == 0 for count in supervisor.restarts.values())


def test_a_service_that_never_starts_fails_the_start_and_leaves_nothing(tmp_path: Path) -> None:
    first = child(tmp_path, "first", "time.sleep(60)")
    broken = Service("broken", child(tmp_path, "broken", "sys.exit(2)").spawn, lambda: False, start_timeout_s=10)
    supervisor = Supervisor([first, broken], backoff=QUICK)
    with pytest.raises(RuntimeError, match="broken exited with 2"):
        supervisor.start()
    assert supervisor.procs == {}


def test_services_marked_with_previous_start_together(tmp_path: Path) -> None:
    # "slow" takes 3 s to be ready; "quick", started with it rather than after it, is ready first.
    slow = child(tmp_path, "slow", "time.sleep(60)", before_ready="time.sleep(3)\n")
    quick = child(tmp_path, "quick", "time.sleep(60)")
    said: list[str] = []
    supervisor = Supervisor([slow, replace(quick, with_previous=True)], restart=False, say=said.append)
    supervisor.start()
    try:
        assert [line.split()[0] for line in said] == ["quick", "slow"]
        assert all(proc.alive() for proc in supervisor.procs.values())
    finally:
        supervisor.stop()


def test_a_service_started_together_that_fails_stops_the_others_at_once(tmp_path: Path) -> None:
    waiting = Service("waiting", child(tmp_path, "waiting", "time.sleep(60)").spawn, lambda: False, start_timeout_s=30)
    broken = child(tmp_path, "broken", "sys.exit(2)")
    supervisor = Supervisor([waiting, replace(broken, with_previous=True)], restart=False)
    started = time.monotonic()
    with pytest.raises(RuntimeError, match="broken exited with 2"):
        supervisor.start()
    assert time.monotonic() - started < 15, "the start waited for the other service's time-out"
    assert supervisor.procs == {}


def test_sigterm_stops_everything(tmp_path: Path) -> None:
    """The way `make run` ends: SIGTERM (or Ctrl-C) to the supervising program stops every child, then it exits."""
    script = tmp_path / "supervise.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import sys, time
            from pathlib import Path
            from devstack.procs import Proc
            from devstack.supervisor import Service, Supervisor, sigterm_as_interrupt

            def service(name):
                spawn = lambda: Proc(name, [sys.executable, "-c", "import time; time.sleep(60)"], {{}},
                                     Path({str(tmp_path)!r}) / f"{{name}}.log")
                return Service(name, spawn, lambda: True)

            sigterm_as_interrupt()
            supervisor = Supervisor([service("a"), service("b")])
            try:
                supervisor.start()
                print(" ".join(str(p.pid) for p in supervisor.procs.values()), flush=True)
                while True:
                    time.sleep(3600)
            except KeyboardInterrupt:
                supervisor.stop()
                print("stopped", flush=True)
            """
        )
    )
    program = subprocess.Popen(
        [sys.executable, str(script)], cwd=ROOT, stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        assert program.stdout is not None
        pids = [int(pid) for pid in program.stdout.readline().split()]
        assert len(pids) == 2 and not any(gone(pid) for pid in pids)
        program.send_signal(signal.SIGTERM)
        assert program.wait(30) == 0
        assert program.stdout.read().strip() == "stopped"
        assert all(gone(pid) for pid in pids)
    finally:
        if program.poll() is None:
            os.killpg(program.pid, signal.SIGKILL)
            program.wait()


def first_start_fails(tmp_path: Path, name: str) -> Service:
    """A service whose first process exits before it is ready; the ones after it serve."""
    marker = tmp_path / f"{name}.failed-once"
    before_ready = (
        f"marker = pathlib.Path({str(marker)!r})\n"
        "if not marker.exists():\n"
        "    marker.write_text('1')\n"
        "    print('giving up during start-up', flush=True)\n"
        "    sys.exit(1)\n"
    )
    return child(tmp_path, name, "time.sleep(60)", before_ready)


def test_a_service_that_exits_during_its_first_start_is_started_again(tmp_path: Path) -> None:
    said: list[str] = []
    supervisor = Supervisor([first_start_fails(tmp_path, "flaky")], backoff=QUICK, say=said.append)
    supervisor.start()
    try:
        assert supervisor.procs["flaky"].alive()
        retried = [line for line in said if line.startswith("flaky exited during its start")]
        assert len(retried) == 1 and retried[0].endswith("starting it again in 0.1 s (attempt 2 of 3)")
        assert any("giving up during start-up" in line for line in said)  # its last words are shown
        assert any(line.startswith("flaky     ready in") for line in said)
    finally:
        supervisor.stop()


def test_without_restarts_a_failed_first_start_fails_at_once(tmp_path: Path) -> None:
    supervisor = Supervisor([first_start_fails(tmp_path, "flaky")], restart=False, backoff=QUICK)
    with pytest.raises(RuntimeError, match="flaky exited with 1"):
        supervisor.start()
    assert not supervisor.procs
