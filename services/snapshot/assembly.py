"""Reassembling a Save stream's chunks into whole tensors, one tensor at a time.

Chunks of a tensor arrive in order and contiguously; its first chunk carries dtype and shape, its last sets `last`.
Each tensor's buffer is allocated once from its declared size (bounded, so a bogus shape cannot exhaust memory) and
filled in place, so a tensor is held exactly once while it is received.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from services.common.errors import InvalidArgument
from services.snapshot.tensors import numpy_dtype

# The largest single tensor a save accepts (a layer of a long-context cache is far smaller).
MAX_TENSOR_BYTES = 16 * 1024**3


@dataclass(slots=True)
class Complete:
    name: str
    dtype: str
    shape: tuple[int, ...]
    data: bytearray


class Assembler:
    def __init__(self, max_tensor_bytes: int = MAX_TENSOR_BYTES) -> None:
        self.max_tensor_bytes = max_tensor_bytes
        self._name: str | None = None
        self._dtype = ""
        self._shape: tuple[int, ...] = ()
        self._buffer = bytearray()
        self._filled = 0
        self.received_bytes = 0

    def feed(self, name: str, dtype: str, shape: Sequence[int], data: bytes, last: bool) -> Complete | None:
        """Returns the tensor once its last chunk is in, else None."""
        if self._name is None:
            self._start(name, dtype, shape)
        elif name != self._name:
            raise InvalidArgument(f"tensor {self._name!r} ended without its last chunk (next chunk is {name!r})")
        end = self._filled + len(data)
        if end > len(self._buffer):
            raise InvalidArgument(
                f"tensor {name!r}: more data than its shape {list(self._shape)} of {self._dtype} holds"
            )
        self._buffer[self._filled : end] = data
        self._filled = end
        self.received_bytes += len(data)
        if not last:
            return None
        if self._filled != len(self._buffer):
            raise InvalidArgument(f"tensor {name!r} is truncated: {self._filled} of {len(self._buffer)} bytes")
        done = Complete(name, self._dtype, self._shape, self._buffer)
        self._name, self._buffer, self._filled = None, bytearray(), 0
        return done

    def _start(self, name: str, dtype: str, shape: Sequence[int]) -> None:
        if not name:
            raise InvalidArgument("a tensor chunk has no name")
        if not dtype:
            raise InvalidArgument(f"tensor {name!r}: its first chunk must carry its dtype and shape")
        dims = tuple(int(d) for d in shape)
        if any(d < 0 for d in dims):
            raise InvalidArgument(f"tensor {name!r}: negative dimension in shape {list(dims)}")
        size = int(np.prod(dims, dtype=np.float64)) * numpy_dtype(dtype).itemsize
        if size > self.max_tensor_bytes:
            raise InvalidArgument(f"tensor {name!r}: {size} bytes is over the {self.max_tensor_bytes}-byte limit")
        self._name, self._dtype, self._shape = name, dtype, dims
        self._buffer = bytearray(size)

    def close(self) -> None:
        """The stream ended: a tensor still open is an error."""
        if self._name is not None:
            raise InvalidArgument(f"the stream ended inside tensor {self._name!r}")
