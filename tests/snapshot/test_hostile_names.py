"""Names that try to leave the store, or to be two names for one file: refused by the layout, the store and the
backends alike (found by tests/fuzz)."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.common.errors import InvalidArgument
from services.snapshot import layout
from services.snapshot.backends import check_location
from services.snapshot.backends.file import FileBackend
from services.snapshot.store import SnapshotStore
from tests.snapshot.support import header, make_cache

TRAVERSALS = [
    "../../etc/passwd",
    "..",
    ".",
    "",
    "/etc/passwd",
    "m1d1x1x1x1/../../x",
    "m1d1x1x1x1/",
    "a\x00b",
    "..\\..\\x",
]


@pytest.mark.parametrize("bad", ["m1d1x1x1x1\n", "m1d1x1x1x1\n\n", "%2e%2e%2f", "m1d1x1x1x1\x00", *TRAVERSALS])
def test_snapshot_ids_are_matched_whole(bad: str) -> None:
    # `$` also matched before a trailing newline: `m1d1x1x1x1\n` passed as an id.
    assert not layout.is_snapshot_id(bad)
    with pytest.raises(InvalidArgument, match="not a snapshot id"):
        layout.check_snapshot_id(bad)


@pytest.mark.parametrize("bad", ["layer.0.key\n", "cold.layer.1.value\n", "layer.0.key/../../x", "../layer.0.key"])
def test_tensor_names_are_matched_whole(bad: str) -> None:
    assert layout.layer_of(bad) is None
    with pytest.raises(InvalidArgument, match="unknown tensor name"):
        layout.tensor_file(bad)


def test_a_second_name_for_a_layer_file_is_refused_so_an_accepted_save_always_loads(
    file_store: SnapshotStore,
) -> None:
    # `layer.0.key\n` used to write past_key_values/0_key.npy over `layer.0.key`: the save was accepted, and every
    # load of it then failed (its manifest listed a tensor no complete snapshot has).
    cache = make_cache(layers=1)
    session = file_store.begin(header(layers=1))
    for name, array in cache.items():
        session.add(name, array.dtype.str, array.shape, bytearray(array.tobytes()))
    with pytest.raises(InvalidArgument, match="unknown tensor name"):
        key = cache["layer.0.key"]
        session.add("layer.0.key\n", key.dtype.str, key.shape, bytearray(key.tobytes()))
    session.abort()


@pytest.mark.parametrize("bad", TRAVERSALS)
def test_backends_refuse_any_location_outside_the_store(tmp_path: Path, bad: str) -> None:
    root = tmp_path / "store"
    backend = FileBackend(root)
    (tmp_path / "outside").mkdir()
    canary = tmp_path / "outside" / "canary"
    canary.write_bytes(b"untouched")
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    with pytest.raises(InvalidArgument):
        check_location(bad)
    with pytest.raises(InvalidArgument):
        check_location("m1d1x1x1x1", bad or "..")
    for call in (
        lambda: backend.claim(bad, b"x"),
        lambda: backend.write(bad, "manifest.json", [b"x"]),
        lambda: backend.write("m1d1x1x1x1", f"{bad or '..'}/canary", [b"x"]),
        lambda: backend.read(bad, "manifest.json"),
        lambda: backend.read("m1d1x1x1x1", f"../../outside/canary{bad[:0]}"),
        lambda: backend.exists(bad, "x"),
        lambda: backend.remove("m1d1x1x1x1", f"../{bad}"),
        lambda: backend.delete(bad),
        lambda: backend.claimed_at(bad),
    ):
        with pytest.raises(InvalidArgument):
            call()
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
    assert canary.read_bytes() == b"untouched"


@pytest.mark.parametrize("bad", TRAVERSALS)
def test_the_store_refuses_path_like_ids_before_touching_the_backend(file_store: SnapshotStore, bad: str) -> None:
    for call in (
        lambda: file_store.load("s-owner", bad, "m", "float32", "f"),
        lambda: file_store.delete("s-owner", bad),
    ):
        with pytest.raises(InvalidArgument, match="not a snapshot id"):
            call()
