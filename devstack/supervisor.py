"""Keeps a set of child processes running, like compose's `restart: always`: a process that exits is started again.

Services start in order, each waited on through its own readiness check (one marked `with_previous` starts together
with the one before it, both waited on at once); with restarts on, one whose process exits before it is ready (a
transient failure, such as Ray giving up on a busy machine) is started again, up to `START_ATTEMPTS` times, with the
same back-off. Then one keeper thread per service waits for its process to exit and starts it again with the same
command and environment (so on the same ports), after an exponential back-off: 0.5 s, doubling to 10 s at most, back
to 0.5 s once a run has stayed up for 30 s. Every exit and every return is said on the console and kept in
`history`. Only `stop()` ends it: every process, in reverse order.

A stopped (SIGSTOP) process has not exited, so it is left alone: a stall is the services' own business.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import FrameType

from devstack.procs import Proc, wait_until

START_ATTEMPTS = 3  # per service at start-up, when restarts are on; a service that never gets ready is not retried


@dataclass(frozen=True, slots=True)
class Backoff:
    first_s: float = 0.5
    cap_s: float = 10.0
    reset_after_s: float = 30.0  # a run that lasted this long starts the sequence over

    def delay(self, restarts_in_a_row: int) -> float:
        return float(min(self.cap_s, self.first_s * 2 ** max(0, restarts_in_a_row - 1)))


@dataclass(frozen=True, slots=True)
class Service:
    """How to start one process (`spawn`, which must not wait) and how to tell that it serves (`ready`)."""

    name: str
    spawn: Callable[[], Proc]
    ready: Callable[[], bool]
    start_timeout_s: float = 60.0
    with_previous: bool = False  # started with the service before it, without waiting for that one to be ready


@dataclass(frozen=True, slots=True)
class Event:
    at: float  # time.monotonic()
    service: str
    what: str  # "exited" | "back" | "failed"
    pid: int
    detail: str = ""


def sigterm_as_interrupt() -> None:
    """Makes SIGTERM end the main thread as Ctrl-C does (KeyboardInterrupt), once: the stop that follows runs whole."""

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_sigterm)


def describe_exit(code: int) -> str:
    """`-9 (SIGKILL)` for a signal, `1` for an exit status."""
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"{code} ({signal.Signals(-code).name})"
    return str(code)


class Supervisor:
    def __init__(
        self,
        services: Sequence[Service],
        *,
        restart: bool = True,
        backoff: Backoff | None = None,
        say: Callable[[str], None] | None = None,
    ) -> None:
        self.services = list(services)
        self.restart = restart
        self.backoff = backoff or Backoff()
        self.say = say or (lambda message: None)
        self.procs: dict[str, Proc] = {}  # the current process of each started service
        self.restarts: dict[str, int] = {service.name: 0 for service in self.services}
        self.history: list[Event] = []
        self._stopping = threading.Event()
        self._lock = threading.Lock()  # a restart never spawns a process after stop() has begun
        self._keepers: list[threading.Thread] = []
        self._up_since: dict[str, float] = {}  # when the current process of each service became ready

    # ---- lifecycle ------------------------------------------------------------------------------------------------
    def start(self) -> Supervisor:
        """Starts every service in order and waits for each to be ready (those marked `with_previous` together with
        the one before them); on any failure stops what started."""
        try:
            for stage in self._stages():
                self._start_together(stage)
        except BaseException:
            self.stop()
            raise
        if self.restart:
            for service in self.services:
                keeper = threading.Thread(target=self._keep, args=(service,), name=f"keep-{service.name}", daemon=True)
                keeper.start()
                self._keepers.append(keeper)
        return self

    def stop(self) -> None:
        with self._lock:  # from here on no keeper spawns a process
            self._stopping.set()
        for name in reversed(list(self.procs)):
            self.procs[name].stop()
        for keeper in self._keepers:  # a keeper waiting on a readiness check sees its process gone
            keeper.join(timeout=30)
        self.procs.clear()

    def dead(self) -> list[str]:
        """Services whose current process has exited (with `restart`, until it is started again)."""
        return [name for name, proc in self.procs.items() if not proc.alive()]

    def wait_back(self, name: str, since: float, timeout: float) -> Event:
        """The first `back` event of `name` after the monotonic time `since`; TimeoutError if none comes in time."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for event in list(self.history):
                if event.service == name and event.what == "back" and event.at > since:
                    return event
            time.sleep(0.05)
        raise TimeoutError(f"{name} was not back within {timeout:.0f} s")

    def _stages(self) -> list[list[Service]]:
        stages: list[list[Service]] = []
        for service in self.services:
            if service.with_previous and stages:
                stages[-1].append(service)
            else:
                stages.append([service])
        return stages

    def _start_together(self, stage: list[Service]) -> None:
        """Starts the services of one stage at once, each waited on in a thread of its own; the first failure stops
        every process (so the others' waits end at once) and is raised."""
        errors: list[BaseException] = []
        failed = threading.Event()

        def launch(service: Service) -> None:
            started = time.monotonic()
            try:
                proc = self._first_launch(service)
            except BaseException as error:
                errors.append(error)
                failed.set()
                return
            self.say(f"{service.name:<9} ready in {time.monotonic() - started:4.1f} s (pid {proc.pid})")

        if len(stage) == 1:
            launch(stage[0])
        else:
            threads = [threading.Thread(target=launch, args=(s,), name=f"start-{s.name}", daemon=True) for s in stage]
            for thread in threads:
                thread.start()
            while any(thread.is_alive() for thread in threads):
                if failed.wait(0.1):
                    self.stop()
                    break
            for thread in threads:
                thread.join()
        if errors:
            raise errors[0]

    # ---- one service ----------------------------------------------------------------------------------------------
    def _first_launch(self, service: Service) -> Proc:
        attempts = START_ATTEMPTS if self.restart else 1
        for attempt in range(1, attempts):
            try:
                return self._launch(service)
            except RuntimeError as error:  # its process exited before it was ready (wait_until says so)
                if self._stopping.is_set():
                    raise
                self.procs[service.name].stop()
                delay = self.backoff.delay(attempt)
                self.say(
                    f"{service.name} exited during its start ({str(error).splitlines()[0]}); "
                    f"starting it again in {delay:g} s (attempt {attempt + 1} of {attempts})"
                )
                self.say(self.procs[service.name].tail(5))
                if self._stopping.wait(delay):  # stopped meanwhile: _launch below refuses to start it
                    break
        return self._launch(service)

    def _launch(self, service: Service) -> Proc:
        with self._lock:
            if self._stopping.is_set():
                raise RuntimeError("stopping")
            proc = service.spawn()
            self.procs[service.name] = proc
        wait_until(service.ready, service.start_timeout_s, f"{service.name} to be ready", proc)
        self._up_since[service.name] = time.monotonic()
        return proc

    def _record(self, service: str, what: str, pid: int, detail: str = "") -> Event:
        event = Event(time.monotonic(), service, what, pid, detail)
        self.history.append(event)
        return event

    def _keep(self, service: Service) -> None:
        name = service.name
        in_a_row = 0
        while not self._stopping.is_set():
            proc = self.procs[name]
            while proc.alive():
                if self._stopping.wait(0.1):
                    return
            code = proc.popen.returncode
            lasted = time.monotonic() - self._up_since.get(name, time.monotonic())
            in_a_row = 1 if lasted >= self.backoff.reset_after_s else in_a_row + 1
            self.restarts[name] += 1
            delay = self.backoff.delay(in_a_row)
            exited = self._record(name, "exited", proc.pid, describe_exit(code))
            self.say(
                f"{name} exited with {describe_exit(code)} after {lasted:.1f} s; "
                f"restarting in {delay:g} s (restart {self.restarts[name]})"
            )
            if code > 0:  # it stopped by itself: its last words say why
                self.say(proc.tail(5))
            proc.stop()  # the rest of its process group too (Ray's processes under the inference driver)
            if self._stopping.wait(delay):
                return
            try:
                proc = self._launch(service)
            except Exception as error:
                if self._stopping.is_set():
                    return
                self._record(name, "failed", self.procs[name].pid, str(error).splitlines()[0])
                self.say(f"{name} did not start again: {str(error).splitlines()[0]}")
                self.procs[name].stop()  # not ready in time: counts as one more exit
                self._up_since[name] = time.monotonic()
                continue
            back = self._record(name, "back", proc.pid)
            self.say(f"{name} is back after {back.at - exited.at:.1f} s (pid {proc.pid})")
