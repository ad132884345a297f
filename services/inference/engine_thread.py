"""Every call into the engine runs on one dedicated thread, off the event loop.

torch's CPU kernels parallelise with an OpenMP team per calling thread, and a team keeps spinning for a while after
each parallel region. Forwards handed to `asyncio.to_thread` land on whichever pool thread is free, so several
teams spin against each other over the same cores. Measured on 2 cores with the embedded model, a worker's decode
step took 67 ms instead of 42 ms with one conversation, and 167 ms instead of 100 ms with eight: the thread pool
cost more than a third of the throughput. One thread, one team.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import torch

T = TypeVar("T")


class EngineThread:
    def __init__(self) -> None:
        threads = torch.get_num_threads()  # as the engine set them up, in the thread that built it
        self._executor = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="engine", initializer=torch.set_num_threads, initargs=(threads,)
        )

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, functools.partial(fn, *args))

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
