"""Tensor shapes whose size overflows or that no numpy array can have (found by tests/fuzz): refused as
INVALID_ARGUMENT before anything is allocated, where they once failed as INTERNAL."""

from __future__ import annotations

import numpy as np
import pytest

from services.common.errors import InvalidArgument
from services.common.tensor_chunks import Assembler
from services.snapshot.store import SnapshotStore
from services.snapshot.tensors import numpy_dtype
from tests.snapshot.support import header


@pytest.mark.parametrize(
    "shape",
    [
        [2**62] * 20,  # the float product is inf: int(inf) raised OverflowError (INTERNAL)
        [2**63 - 1, 2**63 - 1],
        [1, 4, 1 << 30, 8],  # 128 GiB: over the limit, refused before anything is allocated
        [0, 2**62, 2**62],  # empty, but no numpy array has this shape: a ValueError (INTERNAL) in the save
        [1] * 65,  # more dimensions than numpy has
    ],
)
def test_a_tensor_too_large_to_hold_is_refused_before_allocation(shape: list[int]) -> None:
    assembler = Assembler(InvalidArgument, numpy_dtype)
    with pytest.raises(InvalidArgument, match="over the"):
        assembler.feed("layer.0.key", "<f4", shape, b"", last=False)


def test_an_empty_tensor_with_an_impossible_shape_is_refused_by_the_service(file_store: SnapshotStore) -> None:
    session = file_store.begin(header(layers=1))
    with pytest.raises(InvalidArgument):
        session.add("input_ids", "<i8", (0, 2**62, 2**62), bytearray())
    session.abort()


def test_an_empty_tensor_of_an_ordinary_shape_is_still_accepted() -> None:
    assembler = Assembler(InvalidArgument, numpy_dtype)
    done = assembler.feed("layer.0.key", "<f4", [1, 3, 0, 64], b"", last=True)
    assert done is not None and done.shape == (1, 3, 0, 64) and len(done.data) == 0
    assert np.frombuffer(done.data, dtype=done.array_dtype).reshape(done.shape).size == 0
