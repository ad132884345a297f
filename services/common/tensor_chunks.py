"""Tensors on the snapshot wire: one `haloweave.snapshot.v1.TensorChunk` stream per tensor.

Every sender of the Save and Load streams (the inference worker, the snapshot service, tests and benches) cuts arrays
the same way, so the framing lives here once: little-endian contiguous bytes, the dtype label and shape on a tensor's
first chunk only, `last` on its final one, and an empty tensor as a single empty last chunk.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from haloweave.snapshot.v1 import snapshot_pb2

CHUNK_BYTES = 1024 * 1024


def tensor_chunks(
    name: str, array: np.ndarray, chunk_bytes: int = CHUNK_BYTES, dtype: str | None = None
) -> Iterator[snapshot_pb2.TensorChunk]:
    """`array` in chunks of at most `chunk_bytes`; `dtype` overrides the label (e.g. `bfloat16` held as `<u2`)."""
    data = np.ascontiguousarray(array)
    data = data.astype(data.dtype.newbyteorder("<"), copy=False)  # little-endian on the wire whatever the host
    # A memoryview: the slices below copy one chunk at a time, never the whole tensor.
    raw = data.reshape(-1).view(np.uint8).data
    label = dtype or data.dtype.str
    shape = list(data.shape)
    for start in range(0, max(len(raw), 1), chunk_bytes):
        first = start == 0
        yield snapshot_pb2.TensorChunk(
            name=name,
            dtype=label if first else "",
            shape=shape if first else [],
            data=bytes(raw[start : start + chunk_bytes]),
            last=start + chunk_bytes >= len(raw),
        )


def to_chunks(arrays: dict[str, np.ndarray], chunk_bytes: int = CHUNK_BYTES) -> Iterator[snapshot_pb2.TensorChunk]:
    for name, array in arrays.items():
        yield from tensor_chunks(name, array, chunk_bytes)
