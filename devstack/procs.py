"""Child processes that are started, health-checked and stopped by their own process ids.

Each child gets its own process group (so a service's own children, such as Ray's, stop with it) and a log file;
stopping sends SIGTERM to the child, waits, then SIGTERM to what is left of its group (SIGKILL to the whole group
if the child did not exit in time). Nothing is ever killed by name.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(check: Callable[[], bool], timeout: float, what: str, proc: Proc | None = None) -> None:
    """Polls `check` until it is true; fails early if `proc` died, with the tail of its log."""
    deadline = time.monotonic() + timeout
    delay = 0.05
    while time.monotonic() < deadline:
        if proc is not None and proc.popen.poll() is not None:
            raise RuntimeError(
                f"{proc.name} exited with {proc.popen.returncode} while waiting for {what}:\n{proc.tail()}"
            )
        with contextlib.suppress(Exception):
            if check():
                return
        time.sleep(delay)
        delay = min(delay * 1.5, 0.5)
    tail = f"\n{proc.tail()}" if proc is not None else ""
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}{tail}")


class Proc:
    def __init__(
        self, name: str, argv: list[str], env: dict[str, str], log_path: Path, cwd: Path | None = None
    ) -> None:
        self.name = name
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(log_path, "ab")  # noqa: SIM115 - lives as long as the process
        self.popen = subprocess.Popen(
            argv,
            env={**os.environ, **env},
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=cwd,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(f"  {self.name}| {line}" for line in text[-lines:])

    def signal(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, sig)

    def stop(self, timeout: float = 10.0) -> None:
        if self.alive():
            # The child first, alone: one that started processes of its own stops them in order. The inference
            # service's `ray.shutdown()` takes ~3 s so, but ~10 s when its GCS and raylet got the same SIGTERM at once
            # (the driver then waits out its time-outs talking to a GCS that is gone).
            with contextlib.suppress(ProcessLookupError):
                self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
                self.signal(signal.SIGTERM)  # what it left of its group gets the signal it always got
            except subprocess.TimeoutExpired:
                self.signal(signal.SIGKILL)
                self.popen.wait(5)
        else:
            # The leader may be gone while its group (e.g. Ray's raylet) lives on.
            self.signal(signal.SIGKILL)
        self._log.close()


def python_module(module: str, *args: str, python: str | None = None) -> list[str]:
    """`python -m module args`, with this interpreter unless another environment's is named."""
    return [python or sys.executable, "-m", module, *args]


def redis_argv(data_dir: Path, port: int, appendonly: bool = False) -> list[str]:
    """redis-server on 127.0.0.1:port, keeping its files in `data_dir` (the same folder on every restart).

    With `appendonly` every write goes to the append-only file, fsynced once a second (`appendfsync everysec`, chosen
    over `always`, which would fsync in the path of every token's events). The loss window: a crash of the machine
    loses at most the last second of writes (two when the disk is slow); a killed Redis process loses nothing it has
    acknowledged, since Redis writes the file before answering, except while a slow fsync makes it hold writes back
    (up to 2 s). RDB snapshots are off: the AOF alone rebuilds the data on restart.
    """
    return [
        "redis-server",
        "--port", str(port),
        "--bind", "127.0.0.1",
        "--dir", str(data_dir),
        "--save", "",
        "--appendonly", "yes" if appendonly else "no",
        "--appendfsync", "everysec",
        "--protected-mode", "yes",
    ]  # fmt: skip


def start_redis(data_dir: Path, port: int, log_path: Path, appendonly: bool = False) -> Proc:
    """A private redis-server (see `redis_argv`), waited on until it answers PING."""
    data_dir.mkdir(parents=True, exist_ok=True)
    proc = Proc("redis", redis_argv(data_dir, port, appendonly), {}, log_path)
    wait_until(lambda: redis_ping(port), 15, f"redis on port {port}", proc)
    return proc


def redis_ping(port: int) -> bool:
    import redis

    client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=0.5)
    try:
        return bool(client.ping())
    finally:
        client.close()
