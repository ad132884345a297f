"""Peak memory of one measured run, above what was held when it started.

CUDA: the allocator's own peak counter. CPU: torch has no peak counter for host memory, so a thread samples the
process's resident set every millisecond; freed heap is handed back to the OS (malloc_trim) before each run so that
one run's leftovers do not hide the next run's growth.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import threading
import time
from types import TracebackType

import torch

_PAGE = os.sysconf("SC_PAGE_SIZE")


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * _PAGE


def _trim() -> None:
    # Not glibc: the baseline is then less tight, and the figures under-report growth that reuses freed heap.
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


class PeakMemory:
    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.peak_bytes = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._base = 0
        self._max = 0

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.empty_cache()
            self._base = torch.cuda.memory_allocated(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            _trim()
            self._base = self._max = _rss()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self._max = max(self._max, _rss())
            time.sleep(0.001)

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_bytes = torch.cuda.max_memory_allocated(self.device) - self._base
        else:
            self._stop.set()
            assert self._thread is not None
            self._thread.join()
            self._max = max(self._max, _rss())
            self.peak_bytes = self._max - self._base
