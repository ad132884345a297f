"""Snapshot TensorChunks back into a KV cache's arrays (`services.common.tensor_chunks` cuts them).

The first chunk of a tensor carries its numpy dtype and shape; `last` marks its final chunk. Reassembly checks every
promise a chunk makes (known dtype, sizes that add up, no tensor sent twice or left unfinished) and raises `DataLoss`,
so a truncated or garbled stream never becomes a half-built cache.
"""

from __future__ import annotations

import numpy as np
from haloweave.snapshot.v1 import snapshot_pb2

from services.common.errors import DataLoss


class Assembler:
    """Collects chunks into arrays; `arrays()` once every tensor has its last chunk."""

    def __init__(self) -> None:
        self._done: dict[str, np.ndarray] = {}
        self._name: str | None = None
        self._dtype: np.dtype | None = None
        self._shape: tuple[int, ...] = ()
        self._parts: list[bytes] = []
        self._size = 0

    def add(self, chunk: snapshot_pb2.TensorChunk) -> None:
        if self._name is None:
            self._start(chunk)
        elif chunk.name != self._name:
            raise DataLoss(f"snapshot tensor {self._name!r} ended without its last chunk (next is {chunk.name!r})")
        self._parts.append(chunk.data)
        self._size += len(chunk.data)
        assert self._dtype is not None
        expected = int(np.prod(self._shape, dtype=np.int64)) * self._dtype.itemsize
        if self._size > expected:
            raise DataLoss(f"snapshot tensor {self._name!r} has more data than its shape {list(self._shape)}")
        if chunk.last:
            assert self._name is not None
            if self._size != expected:
                raise DataLoss(f"snapshot tensor {self._name!r} is truncated: {self._size} of {expected} bytes")
            # A bytearray keeps the array writable, as torch.from_numpy wants.
            array = np.frombuffer(bytearray(b"".join(self._parts)), dtype=self._dtype).reshape(self._shape)
            self._done[self._name] = array.astype(self._dtype.newbyteorder("="), copy=False)
            self._name, self._parts, self._size = None, [], 0

    def _start(self, chunk: snapshot_pb2.TensorChunk) -> None:
        if not chunk.name:
            raise DataLoss("snapshot chunk without a tensor name")
        if chunk.name in self._done:
            raise DataLoss(f"snapshot tensor {chunk.name!r} sent twice")
        try:
            dtype = np.dtype(chunk.dtype)
        except TypeError:
            raise DataLoss(f"snapshot tensor {chunk.name!r} has unknown dtype {chunk.dtype!r}") from None
        if dtype.kind not in "fiub" or any(dim < 0 for dim in chunk.shape):
            raise DataLoss(f"snapshot tensor {chunk.name!r} has an unusable dtype or shape")
        self._name, self._dtype, self._shape = chunk.name, dtype, tuple(int(d) for d in chunk.shape)

    def arrays(self) -> dict[str, np.ndarray]:
        if self._name is not None:
            raise DataLoss(f"snapshot ended inside tensor {self._name!r}")
        return dict(self._done)
