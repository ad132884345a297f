"""Tensors as the snapshot stores them: dtype labels, .npy framing, and the domain types a save and a load exchange.

Data is only ever moved as raw bytes (never converted), which is what makes round trips bit-exact. `bfloat16`, which
numpy lacks, is carried as raw 2-byte words (`<u2` inside the .npy) and keeps its label in the manifest.
"""

from __future__ import annotations

import io
import threading
from dataclasses import dataclass, field

import numpy as np

from services.common.errors import DataLoss, InvalidArgument

# The cache dtypes a header may name, and the dtype labels their layer tensors may carry (a bfloat16 cache may
# also travel as its raw uint16 bit patterns).
CACHE_DTYPES = {"float32": ("<f4",), "float16": ("<f2",), "bfloat16": ("bfloat16", "<u2")}


def numpy_dtype(label: str) -> np.dtype:
    """The numpy dtype that holds a tensor of this label; only plain numeric dtypes are accepted."""
    if label == "bfloat16":
        return np.dtype("<u2")
    try:
        dtype = np.dtype(label)
    except TypeError:
        expected = "expected a numpy dtype string like <f4, or bfloat16"
        raise InvalidArgument(f"unknown tensor dtype {label!r} ({expected})") from None
    if dtype.kind not in "biufc" or dtype.itemsize == 0:
        raise InvalidArgument(f"tensor dtype {label!r} is not numeric")
    return dtype


@dataclass(slots=True)
class Tensor:
    name: str
    dtype: str  # the label as the saver sent it
    shape: tuple[int, ...]
    array: np.ndarray  # C-contiguous, numpy_dtype(dtype), shape `shape`


@dataclass(slots=True)
class Header:
    """What a snapshot describes about itself (the proto's SnapshotHeader, without grpc)."""

    session_id: str
    model: str
    dtype: str
    cache_impl: str
    tokenizer_fingerprint: str
    num_layers: int
    tracker_state: bytes = b""
    obfuscation: list[str] = field(default_factory=list)

    def validate(self) -> None:
        for name in ("session_id", "model", "cache_impl", "tokenizer_fingerprint"):
            if not getattr(self, name):
                raise InvalidArgument(f"snapshot header: {name} is required")
        if self.dtype not in CACHE_DTYPES:
            raise InvalidArgument(f"snapshot header: dtype {self.dtype!r} is not one of {', '.join(CACHE_DTYPES)}")
        if not 1 <= self.num_layers <= 4096:
            raise InvalidArgument(f"snapshot header: num_layers {self.num_layers} is out of range")


@dataclass(slots=True)
class Info:
    snapshot_id: str
    session_id: str
    model: str
    dtype: str
    tokens: int
    bytes: int
    created_at: str


@dataclass(slots=True)
class Loaded:
    header: Header
    info: Info
    tensors: list[Tensor]


def npy_header(array: np.ndarray) -> bytes:
    out = io.BytesIO()
    header = {"descr": np.lib.format.dtype_to_descr(array.dtype), "fortran_order": False, "shape": array.shape}
    np.lib.format.write_array_header_1_0(out, header)
    return out.getvalue()


def npy_parts(array: np.ndarray) -> list[memoryview]:
    """An .npy file as [header, data] views: the data is not copied."""
    return [memoryview(npy_header(array)), array.reshape(-1).view(np.uint8).data]


# numpy parses an .npy header with ast.literal_eval, and CPython 3.11 keeps the AST constructor's recursion depth in
# state the threads share: two loads reading headers at once failed now and then, under load, with "SystemError: AST
# constructor recursion depth mismatch" (INTERNAL). Headers are a few dozen bytes; only their parsing is serialised.
_HEADER_LOCK = threading.Lock()


def from_npy(data: bytearray, where: str) -> np.ndarray:
    """A view over the .npy in `data` (no copy)."""
    try:
        stream = io.BytesIO(memoryview(data)[: min(len(data), 1 << 16)])
        with _HEADER_LOCK:
            version = np.lib.format.read_magic(stream)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(stream)
            else:
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(stream)
        if fortran or dtype.hasobject:
            raise ValueError("unsupported layout")
        count = int(np.prod(shape, dtype=np.int64))
        return np.frombuffer(data, dtype=dtype, count=count, offset=stream.tell()).reshape(shape)
    except ValueError as error:
        raise DataLoss(f"{where} is not a readable .npy ({error})") from None


def to_npy_bytes(array: np.ndarray) -> bytes:
    return b"".join(bytes(part) for part in npy_parts(np.ascontiguousarray(array)))
