"""Snapshot TensorChunks back into a KV cache's arrays (`services.common.tensor_chunks` cuts them).

Reassembly (`tensor_chunks.Assembler`, filled in place) checks every promise a chunk makes and raises `DataLoss`, so a
truncated or garbled stream never becomes a half-built cache.
"""

from __future__ import annotations

import numpy as np
from haloweave.snapshot.v1 import snapshot_pb2

from services.common import tensor_chunks
from services.common.errors import DataLoss


def _dtype(label: str) -> np.dtype:
    try:
        dtype = np.dtype(label)
    except TypeError:
        raise DataLoss(f"snapshot tensor has unknown dtype {label!r}") from None
    if dtype.kind not in "fiub" or dtype.itemsize == 0:
        raise DataLoss(f"snapshot tensor has an unusable dtype {label!r}")
    return dtype


class Assembler:
    """Collects a Load stream's chunks into arrays (native byte order); `arrays()` once every tensor is complete."""

    def __init__(self) -> None:
        self._chunks = tensor_chunks.Assembler(DataLoss, _dtype)
        self._done: dict[str, np.ndarray] = {}

    def add(self, chunk: snapshot_pb2.TensorChunk) -> None:
        complete = self._chunks.feed(chunk.name, chunk.dtype, chunk.shape, chunk.data, chunk.last)
        if complete is not None:
            dtype = complete.array_dtype
            array = np.frombuffer(complete.data, dtype=dtype).reshape(complete.shape)
            self._done[complete.name] = array.astype(dtype.newbyteorder("="), copy=False)

    def arrays(self) -> dict[str, np.ndarray]:
        self._chunks.close()
        return dict(self._done)
