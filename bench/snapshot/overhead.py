"""What obfuscation plus encryption cost over a plain save, measured on the store itself (no gRPC to dilute it)."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import numpy as np

from services.snapshot.backends.file import FileBackend
from services.snapshot.crypto import MasterKey
from services.snapshot.store import SnapshotStore
from services.snapshot.tensors import Header

CHAIN = ["rotate_heads", "xor_mask", "remap_ids"]


def _save(store: SnapshotStore, chain: list[str], arrays: dict[str, np.ndarray]) -> float:
    layers = sum(1 for name in arrays if name.endswith(".key"))
    head = Header("bench", "SmolLM2-135M-Instruct", "float32", "dynamic", "bench", layers, b"", chain)
    # The service receives each tensor into a buffer it owns; make those before the clock starts.
    buffers = {name: bytearray(array.tobytes()) for name, array in arrays.items()}
    started = time.perf_counter()
    session = store.begin(head)
    for name, array in arrays.items():
        session.add(name, array.dtype.str, array.shape, buffers.pop(name))
    session.finish()
    return time.perf_counter() - started


def plain_vs_protected(workdir: Path, arrays: dict[str, np.ndarray], repeats: int) -> dict[str, list[float]]:
    """Interleaved: a plain save (no chain, no encryption) then a protected one, `repeats` times (order alternates)."""
    root = workdir / "overhead"
    plain = SnapshotStore(FileBackend(root / "plain"), None)
    protected = SnapshotStore(FileBackend(root / "protected"), MasterKey(os.urandom(32)))
    times: dict[str, list[float]] = {"plain": [], "protected": []}
    for repeat in range(repeats):
        order = [("plain", plain, []), ("protected", protected, CHAIN)]
        if repeat % 2:
            order.reverse()
        for label, store, chain in order:
            times[label].append(_save(store, chain, arrays))
            shutil.rmtree(root / label)
            (root / label).mkdir(parents=True)
    shutil.rmtree(root)
    return times
