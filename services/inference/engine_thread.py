"""Every call into the engine, its construction included, runs on one thread of the process, off the event loop.

torch's CPU kernels parallelise with a GNU OpenMP team per calling thread. Forwards handed to `asyncio.to_thread`
land on whichever pool thread is free, so several teams exist; and as soon as a process holds more OpenMP threads
than there are cores, libgomp cuts its spin-wait before sleeping from 300,000 to 100 spins (GOMP_SPINCOUNT), so every
parallel region of every later forward pays a futex wake-up. Measured on 2 cores with the embedded model: a decode
step of eight conversations takes 81 ms when one thread does all the torch work, 162 ms once a second thread has run
a single forward (the same as with OMP_WAIT_POLICY=PASSIVE). One thread, one team: `shared()`.
"""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")

_lock = threading.Lock()
_shared: EngineThread | None = None


class EngineThread:
    def __init__(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="engine")

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, functools.partial(fn, *args))

    def call(self, fn: Callable[..., T], *args: Any) -> T:
        """From a thread without an event loop (building the engine): waits for the result."""
        return self._executor.submit(fn, *args).result()


def shared() -> EngineThread:
    """The process's engine thread."""
    global _shared
    with _lock:
        if _shared is None:
            _shared = EngineThread()
        return _shared
