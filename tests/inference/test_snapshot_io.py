"""KV arrays ↔ snapshot TensorChunks: exact round trips and refusal of broken streams."""

from __future__ import annotations

import numpy as np
import pytest
from haloweave.snapshot.v1 import snapshot_pb2

from services.common.errors import DataLoss
from services.common.tensor_chunks import to_chunks
from services.inference.snapshot_io import Assembler


def arrays() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "input_ids": np.arange(7, dtype=np.int64)[None, :],
        "layer.0.key": rng.standard_normal((1, 3, 7, 64)).astype(np.float32),
        "layer.0.value": rng.standard_normal((1, 3, 7, 64)).astype(np.float16),
        "empty": np.zeros((1, 0), dtype=np.int64),
    }


def assemble(chunks: list[snapshot_pb2.TensorChunk]) -> dict[str, np.ndarray]:
    assembler = Assembler()
    for chunk in chunks:
        assembler.add(chunk)
    return assembler.arrays()


def test_round_trip_over_many_small_chunks() -> None:
    source = arrays()
    chunks = list(to_chunks(source, chunk_bytes=1000))
    assert all(len(c.data) <= 1000 for c in chunks)
    assert sum(c.last for c in chunks) == len(source)
    back = assemble(chunks)
    assert list(back) == list(source)
    for name, array in source.items():
        assert back[name].dtype == array.dtype and back[name].shape == array.shape
        np.testing.assert_array_equal(back[name], array)


def test_default_chunks_are_at_most_one_mib() -> None:
    big = {"layer.0.key": np.ones((1, 3, 4000, 64), dtype=np.float32)}  # about 3 MiB
    chunks = list(to_chunks(big))
    assert len(chunks) == 3 and max(len(c.data) for c in chunks) <= 1024 * 1024
    np.testing.assert_array_equal(assemble(chunks)["layer.0.key"], big["layer.0.key"])


def test_truncated_interleaved_or_repeated_tensors_are_refused() -> None:
    chunks = list(to_chunks(arrays(), chunk_bytes=1000))
    with pytest.raises(DataLoss, match="ended inside"):
        assemble(chunks[:3])
    short = snapshot_pb2.TensorChunk()
    short.CopyFrom(chunks[0])
    short.data = short.data[:-8]
    with pytest.raises(DataLoss, match="truncated"):
        assemble([short])
    with pytest.raises(DataLoss, match="without its last chunk"):
        assemble([chunks[1], next(c for c in chunks if c.name == "layer.0.value")])
    with pytest.raises(DataLoss, match="sent twice"):
        assemble([chunks[0], chunks[0]])
    with pytest.raises(DataLoss, match="dtype"):
        assemble([snapshot_pb2.TensorChunk(name="x", dtype="garbage", shape=[1], data=b"\0", last=True)])
