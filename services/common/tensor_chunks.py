"""Tensors on the snapshot wire: one `haloweave.snapshot.v1.TensorChunk` stream per tensor.

Every sender of the Save and Load streams (the inference worker, the snapshot service, tests and benches) cuts arrays
the same way, so the framing lives here once: little-endian contiguous bytes, the dtype label and shape on a tensor's
first chunk only, `last` on its final one, and an empty tensor as a single empty last chunk. Every receiver puts them
back together with `Assembler`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
from haloweave.snapshot.v1 import snapshot_pb2

from services.common.errors import HaloWeaveError

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


# The largest single tensor a receiver accepts (a layer of a long-context cache is far smaller).
MAX_TENSOR_BYTES = 16 * 1024**3
# A cache tensor has at most 4 dimensions; numpy itself stops at 64.
MAX_DIMS = 8


@dataclass(slots=True)
class Complete:
    name: str
    dtype: str  # the label as sent (e.g. `<f4`, or `bfloat16` held as `<u2`)
    array_dtype: np.dtype  # what the receiver's `dtype_of` made of the label
    shape: tuple[int, ...]
    data: bytearray  # writable, as torch.from_numpy wants


class Assembler:
    """Puts chunks back together, one tensor at a time, and checks every promise a chunk makes.

    Chunks of a tensor arrive in order and contiguously. Each tensor's buffer is allocated once from its declared size
    (bounded, so a bogus shape cannot exhaust memory) and filled in place, so a tensor is held exactly once while it is
    received. Any broken promise (no name, unknown dtype, more or fewer bytes than the shape holds, a tensor
    interleaved with another, sent twice, or left unfinished) raises `error`: the snapshot service refuses a bad Save
    with InvalidArgument, the worker treats a bad Load as DataLoss.
    """

    def __init__(
        self,
        error: type[HaloWeaveError],
        dtype_of: Callable[[str], np.dtype],
        max_tensor_bytes: int = MAX_TENSOR_BYTES,
    ) -> None:
        self.error = error
        self.dtype_of = dtype_of  # label -> numpy dtype; raises for labels the receiver does not accept
        self.max_tensor_bytes = max_tensor_bytes
        self.received_bytes = 0
        self._seen: set[str] = set()
        self._name: str | None = None
        self._dtype = ""
        self._array_dtype = np.dtype(np.uint8)
        self._shape: tuple[int, ...] = ()
        self._buffer = bytearray()
        self._filled = 0

    def feed(self, name: str, dtype: str, shape: Sequence[int], data: bytes, last: bool) -> Complete | None:
        """Returns the tensor once its last chunk is in, else None."""
        if self._name is None:
            self._start(name, dtype, shape)
        elif name != self._name:
            raise self.error(f"tensor {self._name!r} ended without its last chunk (next chunk is {name!r})")
        end = self._filled + len(data)
        if end > len(self._buffer):
            raise self.error(f"tensor {name!r}: more data than its shape {list(self._shape)} of {self._dtype} holds")
        self._buffer[self._filled : end] = data
        self._filled = end
        self.received_bytes += len(data)
        if not last:
            return None
        if self._filled != len(self._buffer):
            raise self.error(f"tensor {name!r} is truncated: {self._filled} of {len(self._buffer)} bytes")
        done = Complete(name, self._dtype, self._array_dtype, self._shape, self._buffer)
        self._name, self._buffer, self._filled = None, bytearray(), 0
        return done

    def _start(self, name: str, dtype: str, shape: Sequence[int]) -> None:
        if not name:
            raise self.error("a tensor chunk has no name")
        if name in self._seen:
            raise self.error(f"tensor {name!r} sent twice")
        if not dtype:
            raise self.error(f"tensor {name!r}: its first chunk must carry its dtype and shape")
        dims = tuple(int(d) for d in shape)
        if any(d < 0 for d in dims):
            raise self.error(f"tensor {name!r}: negative dimension in shape {list(dims)}")
        if len(dims) > MAX_DIMS:
            raise self.error(f"tensor {name!r}: {len(dims)} dimensions is over the limit of {MAX_DIMS}")
        array_dtype = self.dtype_of(dtype)
        # Exact integers (a float product of huge dims overflows to inf). The span leaves zeros out: numpy cannot
        # shape even an empty array whose other dimensions multiply past what it can address.
        size = math.prod(dims) * array_dtype.itemsize
        span = math.prod(d for d in dims if d) * array_dtype.itemsize
        if max(size, span) > self.max_tensor_bytes:
            raise self.error(f"tensor {name!r}: {span} bytes is over the {self.max_tensor_bytes}-byte limit")
        self._seen.add(name)
        self._name, self._dtype, self._array_dtype, self._shape = name, dtype, array_dtype, dims
        self._buffer = bytearray(size)

    def close(self) -> None:
        """The stream ended: a tensor still open is an error."""
        if self._name is not None:
            raise self.error(f"the stream ended inside tensor {self._name!r}")
