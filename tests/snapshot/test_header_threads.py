"""Loads read a snapshot's .npy files in two threads, and numpy parses each header with ast.literal_eval, which CPython
3.11 does not make safe to run in two threads at once (found by tests/fuzz: now and then a load failed with
"SystemError: AST constructor recursion depth mismatch", INTERNAL). Header parsing is serialised."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest

from services.snapshot import tensors


def test_npy_headers_are_never_parsed_in_two_threads_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    inside, most = 0, 0
    guard = threading.Lock()
    parse = np.lib.format.read_array_header_1_0

    def watched(stream: Any) -> Any:
        nonlocal inside, most
        with guard:
            inside += 1
            most = max(most, inside)
        time.sleep(0.002)  # long enough for another thread to come in, were it let
        try:
            return parse(stream)
        finally:
            with guard:
                inside -= 1

    monkeypatch.setattr(np.lib.format, "read_array_header_1_0", watched)
    blobs = [bytearray(tensors.to_npy_bytes(np.arange(i, dtype="<f4").reshape(1, i))) for i in range(1, 41)]
    with ThreadPoolExecutor(max_workers=4) as pool:
        arrays = list(pool.map(lambda blob: tensors.from_npy(blob, "test"), blobs))
    assert [a.shape for a in arrays] == [(1, i) for i in range(1, 41)]
    assert most == 1
