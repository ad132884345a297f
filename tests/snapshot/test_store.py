"""The store on a local directory: exact round trips, the on-disk layout, tamper and mismatch refusal, ownership,
unique names under concurrent saves, and crash safety with garbage collection."""

from __future__ import annotations

import base64
import json
import re
import threading
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from devstack.procs import wait_until
from services.common.errors import DataLoss, FailedPrecondition, InvalidArgument, NotFound, PermissionDenied
from services.snapshot import layout
from services.snapshot.backends.file import FileBackend
from services.snapshot.store import SnapshotStore
from tests.snapshot.support import assert_bit_exact, header, load, make_cache, make_cold, new_master, save


def folder(store: SnapshotStore, snapshot_id: str) -> Path:
    assert isinstance(store.backend, FileBackend)
    return store.backend.root / snapshot_id


@pytest.mark.parametrize(
    "chain", [[], ["rotate_heads", "xor_mask", "remap_ids"], ["remap_ids", "xor_mask", "rotate_heads", "remap_ids"]]
)
def test_round_trip_is_bit_exact(file_store: SnapshotStore, chain: list[str]) -> None:
    cache = make_cache(layers=3)
    info = save(file_store, header(layers=3, obfuscation=chain), cache)
    assert info.tokens == 12 and info.session_id == "s-owner" and info.bytes > sum(a.nbytes for a in cache.values())
    loaded = file_store.load("s-owner", info.snapshot_id, "SmolLM2-135M-Instruct", "float32", "0123456789abcdef")
    assert loaded.header.tracker_state == b"\x08\x01tracker-state"
    assert loaded.header.obfuscation == chain and loaded.header.num_layers == 3
    assert [t.name for t in loaded.tensors] == layout.tensor_names(3)
    assert_bit_exact(load(file_store, info), cache)


@pytest.mark.parametrize("cold", [5, 0])
@pytest.mark.parametrize(
    "chain", [[], ["rotate_heads", "xor_mask", "remap_ids"], ["remap_ids", "xor_mask", "rotate_heads", "remap_ids"]]
)
def test_round_trip_with_a_cold_tier_is_bit_exact(file_store: SnapshotStore, chain: list[str], cold: int) -> None:
    cache = make_cache(layers=3, cold=cold)
    info = save(file_store, header(layers=3, obfuscation=chain), cache)
    assert info.tokens == 12  # the hot token count, whatever the cold tier holds
    loaded = file_store.load("s-owner", info.snapshot_id, "SmolLM2-135M-Instruct", "float32", "0123456789abcdef")
    assert [t.name for t in loaded.tensors] == layout.tensor_names(3, cold=True)
    assert_bit_exact(load(file_store, info), cache)
    assert file_store._manifest(info.snapshot_id).tokens == 12


def test_a_cold_tier_sent_first_or_interleaved_round_trips(file_store: SnapshotStore) -> None:
    cache = make_cache(layers=2, cold=4)
    order = [n for n in cache if n.startswith("cold.")] + [n for n in cache if not n.startswith("cold.")]
    order.insert(3, order.pop())  # a hot layer among the cold ones
    info = save(file_store, header(layers=2), {n: cache[n] for n in order})
    loaded = file_store.load("s-owner", info.snapshot_id, "SmolLM2-135M-Instruct", "float32", "0123456789abcdef")
    assert [t.name for t in loaded.tensors] == layout.tensor_names(2, cold=True)
    assert_bit_exact(load(file_store, info), cache)


def test_a_snapshot_without_a_cold_tier_loads_as_before(file_store: SnapshotStore) -> None:
    cache = make_cache(layers=2)
    info = save(file_store, header(layers=2), cache)
    manifest = file_store._manifest(info.snapshot_id)
    assert not any(p.startswith("cold/") for p in manifest.files)
    assert not any(n.startswith("cold.") for n in manifest.tensors)
    loaded = file_store.load("s-owner", info.snapshot_id, "SmolLM2-135M-Instruct", "float32", "0123456789abcdef")
    assert [t.name for t in loaded.tensors] == layout.tensor_names(2)
    assert_bit_exact(load(file_store, info), cache)


def test_a_reader_without_cold_tier_support_refuses_one_as_incomplete(
    file_store: SnapshotStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    info = save(file_store, header(layers=2), make_cache(layers=2, cold=3))
    monkeypatch.setattr(layout, "cold_tensor_names", lambda num_layers: [])  # what an older reader knows
    with pytest.raises(DataLoss, match="does not list the files of a complete snapshot"):
        load(file_store, info)


def test_bfloat16_cache_travels_as_raw_words(file_store: SnapshotStore) -> None:
    cache = make_cache(dtype="<u2")
    info = save(file_store, header(dtype="bfloat16"), cache)
    assert_bit_exact(load(file_store, info, dtype="bfloat16"), cache)


def test_folder_holds_exactly_the_layout_and_no_key_material(file_store: SnapshotStore) -> None:
    info = save(file_store, header(layers=2), make_cache(layers=2))
    root = folder(file_store, info.snapshot_id)
    files = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    assert files == sorted(
        [
            ".claim",
            "attention_mask.npy",
            "input_ids.npy",
            "position_ids.npy",
            "manifest.json",
            "metadata/config.txt",
            "metadata/keylog.txt",
            "metadata/obfchain.txt",
            "metadata/symbolic_map.npy",
            "metadata/tracker_state.bin",
            "past_key_values/0_key.npy",
            "past_key_values/0_value.npy",
            "past_key_values/1_key.npy",
            "past_key_values/1_value.npy",
        ]
    )
    manifest = json.loads((root / "manifest.json").read_text())
    # The manifest lists every file but itself and the claim marker, each with the sha256 of its stored bytes.
    assert set(manifest["files"]) == set(files) - {".claim", "manifest.json"}
    assert manifest["encrypted"] is True and set(manifest["key"]) == {"key_id", "master_key_id", "wrapped"}
    # Stored files are ciphertext: neither the tracker state nor the config is readable on disk.
    assert b"tracker-state" not in (root / "metadata/tracker_state.bin").read_bytes()
    assert b"SmolLM2" not in (root / "metadata/config.txt").read_bytes()
    # The data key never appears anywhere in the clear.
    session = file_store.begin(header(layers=2))
    key = session.data_key
    assert key is not None
    session.abort()
    everything = b"".join(p.read_bytes() for p in root.rglob("*") if p.is_file())
    assert file_store.master is not None
    for secret in (key.key, key.key.hex().encode(), base64.b64encode(key.key)):
        assert secret not in everything


def test_folder_with_a_cold_tier_holds_its_files(file_store: SnapshotStore) -> None:
    info = save(file_store, header(layers=2), make_cache(layers=2, cold=5))
    root = folder(file_store, info.snapshot_id)
    files = {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}
    cold = {p for p in files if p.startswith("cold/")}
    assert cold == {
        "cold/input_ids.npy",
        "cold/position_ids.npy",
        "cold/past_key_values/0_key.npy",
        "cold/past_key_values/0_value.npy",
        "cold/past_key_values/1_key.npy",
        "cold/past_key_values/1_value.npy",
    }
    manifest = json.loads((root / "manifest.json").read_text())
    assert set(manifest["files"]) == files - {".claim", "manifest.json"}
    assert manifest["tokens"] == 12
    assert manifest["tensors"]["cold.layer.1.value"] == ["<f4", [1, 3, 5, 8]]
    assert manifest["tensors"]["cold.input_ids"] == ["<i8", [1, 5]]


def _rewrite_manifest(store: SnapshotStore, snapshot_id: str, edit) -> None:  # type: ignore[no-untyped-def]
    """Edits a stored manifest consistently: the edit, then a MAC under the snapshot's own data key (a plaintext
    store has none), so that only what the edit lists is wrong."""
    manifest = store._manifest(snapshot_id)
    key = store._data_key(manifest)
    edit(manifest)
    if key is not None:
        manifest.mac = key.mac(manifest.canonical())
    store.backend.write(snapshot_id, layout.MANIFEST, [manifest.to_bytes()])


def _drop(name: str):  # type: ignore[no-untyped-def]
    def edit(manifest: layout.Manifest) -> None:
        del manifest.tensors[name]
        del manifest.files[layout.tensor_file(name)]

    return edit


def _add_unknown(manifest: layout.Manifest) -> None:
    # A cold layer beyond the header's two: a file no complete snapshot of this config lists.
    manifest.files["cold/past_key_values/2_key.npy"] = manifest.files["cold/past_key_values/1_key.npy"]
    manifest.tensors["cold.layer.2.key"] = manifest.tensors["cold.layer.1.key"]


def _only_cold_ids(manifest: layout.Manifest) -> None:
    for name in layout.cold_tensor_names(2)[1:]:
        _drop(name)(manifest)


@pytest.mark.parametrize("encrypted", [True, False])
@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (_drop("cold.layer.1.value"), r"missing cold\.layer\.1\.value, cold/past_key_values/1_value\.npy\)"),
        (_drop("cold.input_ids"), r"missing cold\.input_ids, cold/input_ids\.npy\)"),
        (_only_cold_ids, r"missing cold\.layer\.0\.key, cold\.layer\.0\.value, .* and \d+ more\)"),
        (_add_unknown, r"\(unexpected cold\.layer\.2\.key, cold/past_key_values/2_key\.npy\)"),
    ],
)
def test_a_manifest_with_a_partial_cold_tier_is_refused(tmp_path: Path, edit, message: str, encrypted: bool) -> None:  # type: ignore[no-untyped-def]
    store = SnapshotStore(FileBackend(tmp_path), new_master() if encrypted else None)
    cache = make_cache(layers=2, cold=5)
    info = save(store, header(layers=2), cache)
    root = folder(store, info.snapshot_id)
    original = (root / layout.MANIFEST).read_bytes()
    _rewrite_manifest(store, info.snapshot_id, edit)
    with pytest.raises(DataLoss, match="does not list the files of a complete snapshot") as error:
        load(store, info)
    assert re.search(message, error.value.message), error.value.message
    (root / layout.MANIFEST).write_bytes(original)
    assert_bit_exact(load(store, info), cache)


def test_a_missing_cold_file_fails_the_load(file_store: SnapshotStore) -> None:
    info = save(file_store, header(layers=2), make_cache(layers=2, cold=5))
    (folder(file_store, info.snapshot_id) / "cold/past_key_values/0_key.npy").unlink()
    with pytest.raises(DataLoss, match=r"cold/past_key_values/0_key\.npy is missing"):
        load(file_store, info)


def test_keylog_and_config_say_what_they_should(file_store: SnapshotStore) -> None:
    info = save(file_store, header(layers=1), make_cache(layers=1))
    manifest = file_store._manifest(info.snapshot_id)
    data_key = file_store._data_key(manifest)
    keylog = file_store._read_file(manifest, data_key, layout.KEYLOG).decode()
    assert f"snapshot={info.snapshot_id} session=s-owner cipher=AES-256-GCM" in keylog
    assert f"data_key={manifest.key['key_id']}" in keylog and f"master_key={manifest.key['master_key_id']}" in keylog
    assert data_key is not None and data_key.key.hex() not in keylog
    config = layout.Config.from_text(file_store._read_file(manifest, data_key, layout.CONFIG).decode())
    assert (config.model, config.dtype, config.cache_impl, config.format_version) == (
        "SmolLM2-135M-Instruct",
        "float32",
        "dynamic",
        layout.FORMAT_VERSION,
    )


def test_changing_any_byte_of_any_stored_file_fails_the_load(file_store: SnapshotStore) -> None:
    info = save(file_store, header(layers=1), make_cache(layers=1, tokens=3, head_dim=2))
    root = folder(file_store, info.snapshot_id)
    for path in sorted(p for p in root.rglob("*") if p.is_file() and p.name != ".claim"):
        original = path.read_bytes()
        # 24 offsets spread over each file, first and last byte included (test_crypto covers every byte of a
        # sealed file; here each file's own path through the load is what is checked).
        offsets = sorted({round(i * (len(original) - 1) / 23) for i in range(24)})
        for offset in offsets:
            tampered = bytearray(original)
            tampered[offset] ^= 0x20
            path.write_bytes(tampered)
            with pytest.raises(DataLoss):
                load(file_store, info)
        path.write_bytes(original)
    assert load(file_store, info)  # restored files load again: the failures were the tampering


def test_missing_truncated_or_extended_files_fail_the_load(file_store: SnapshotStore) -> None:
    info = save(file_store, header(layers=1), make_cache(layers=1))
    root = folder(file_store, info.snapshot_id)
    target = root / "past_key_values/0_value.npy"
    original = target.read_bytes()
    for broken in (original[:-1], original + b"\0", b""):
        target.write_bytes(broken)
        with pytest.raises(DataLoss, match=r"0_value\.npy"):
            load(file_store, info)
    target.unlink()
    with pytest.raises(DataLoss, match=r"0_value\.npy is missing"):
        load(file_store, info)


def test_mismatched_loader_is_refused_before_reading_tensors(file_store: SnapshotStore) -> None:
    info = save(file_store, header(), make_cache())
    cases = {"model": "other-model", "dtype": "bfloat16", "tokenizer_fingerprint": "ffffffffffffffff"}
    for field, value in cases.items():
        with pytest.raises(FailedPrecondition, match="does not fit this worker") as error:
            load(file_store, info, **{field: value})
        assert value in error.value.message
    with pytest.raises(InvalidArgument, match="model of the loader is required"):
        load(file_store, info, model="")


def test_another_format_version_is_refused(file_store: SnapshotStore, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(layout, "FORMAT_VERSION", 2)
    info = save(file_store, header(), make_cache())
    monkeypatch.setattr(layout, "FORMAT_VERSION", 1)
    with pytest.raises(FailedPrecondition, match="format version 2; this service reads version 1"):
        load(file_store, info)


def test_another_master_key_or_a_plaintext_snapshot_is_refused(tmp_path: Path) -> None:
    backend = FileBackend(tmp_path)
    info = save(SnapshotStore(backend, new_master()), header(), make_cache())
    with pytest.raises(DataLoss, match="names master key"):
        load(SnapshotStore(backend, new_master()), info)
    plain = save(SnapshotStore(backend, None), header(), make_cache())
    with pytest.raises(DataLoss, match="not encrypted"):
        load(SnapshotStore(backend, new_master()), plain)
    assert_bit_exact(load(SnapshotStore(backend, None), plain), make_cache())


def test_ownership_list_and_delete(file_store: SnapshotStore) -> None:
    ticks = iter(datetime(2026, 5, 1, 12, 0, s, tzinfo=UTC) for s in range(10))
    file_store.clock = lambda: next(ticks)
    first = save(file_store, header(), make_cache())
    second = save(file_store, header(), make_cache(seed=1))
    other = save(file_store, header(session_id="s-other"), make_cache())
    assert [i.snapshot_id for i in file_store.list_session("s-owner")] == [second.snapshot_id, first.snapshot_id]
    assert [i.snapshot_id for i in file_store.list_session("s-other")] == [other.snapshot_id]
    assert file_store.list_session("s-nobody") == []
    with pytest.raises(PermissionDenied, match="belongs to another session"):
        load(file_store, other)
    with pytest.raises(PermissionDenied):
        file_store.delete("s-owner", other.snapshot_id)
    file_store.delete("s-owner", first.snapshot_id)
    assert [i.snapshot_id for i in file_store.list_session("s-owner")] == [second.snapshot_id]
    assert not folder(file_store, first.snapshot_id).exists()
    with pytest.raises(NotFound):
        load(file_store, first)
    with pytest.raises(NotFound):
        file_store.delete("s-owner", first.snapshot_id)
    with pytest.raises(InvalidArgument, match="not a snapshot id"):
        file_store.delete("s-owner", "../" + second.snapshot_id)
    assert_bit_exact(load(file_store, second), make_cache(seed=1))


def test_concurrent_saves_in_one_second_get_unique_names(tmp_path: Path) -> None:
    fixed = datetime(2026, 7, 4, 9, 8, 7, tzinfo=UTC)
    backend = FileBackend(tmp_path)
    # Separate store objects, as separate replicas would be: only the backend's atomic claim keeps names apart.
    stores = [SnapshotStore(backend, new_master(), clock=lambda: fixed) for _ in range(8)]
    results: dict[int, str] = {}
    start = threading.Barrier(len(stores))

    def run(i: int) -> None:
        start.wait()
        results[i] = save(stores[i], header(session_id=f"s{i}"), make_cache(seed=i)).snapshot_id

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(stores))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    names = sorted(results.values())
    assert len(set(names)) == len(stores)
    assert names[0] == "m7d4x9x8x7" and set(names[1:]) == {f"m7d4x9x8x7_{n}" for n in range(2, 9)}
    for i, name in results.items():
        assert_bit_exact(load(stores[i], layout_info(stores[i], name, f"s{i}"), session_id=f"s{i}"), make_cache(seed=i))


def layout_info(store: SnapshotStore, snapshot_id: str, session_id: str):  # type: ignore[no-untyped-def]
    return next(i for i in store.list_session(session_id) if i.snapshot_id == snapshot_id)


def test_interrupted_save_is_invisible_and_collected(file_store: SnapshotStore) -> None:
    cache = make_cache()
    session = file_store.begin(header())
    for name in ["input_ids", "attention_mask", "position_ids", "layer.0.key"]:
        session.add(name, cache[name].dtype.str, cache[name].shape, bytearray(cache[name].tobytes()))
    orphan = session.snapshot_id
    # Writes run behind the session (overlapping the next tensor); wait for this one to land.
    wait_until(lambda: (folder(file_store, orphan) / "past_key_values/0_key.npy").exists(), 30, "the write")
    assert file_store.list_session("s-owner") == []
    with pytest.raises(NotFound):
        file_store.load("s-owner", orphan, "SmolLM2-135M-Instruct", "float32", "0123456789abcdef")
    # A save in flight in this process is never collected, whatever its age.
    assert file_store.collect_garbage(grace_s=0) == []
    # The process dies: a new store (a restarted service) sees only an old folder without a manifest.
    restarted = SnapshotStore(file_store.backend, file_store.master)
    assert restarted.collect_garbage(grace_s=3600) == []  # too young: another replica may still be writing it
    assert restarted.collect_garbage(grace_s=0) == [orphan]
    assert not folder(file_store, orphan).exists()
    complete = save(restarted, header(), cache)
    assert restarted.collect_garbage(grace_s=0) == []  # complete snapshots are never collected
    assert_bit_exact(load(restarted, complete), cache)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda c: c.pop("layer.1.value"), "missing layer.1.value"),
        (lambda c: c.update({"layer.2.key": c["layer.0.key"]}), "header declares 2 layers"),
        (lambda c: c.update({"logits": c["input_ids"]}), "unknown tensor name 'logits'"),
        (lambda c: c.update({"layer.0.key": c["layer.0.key"].view(np.float16)}), "header says the cache is float32"),
        (lambda c: c.update({"layer.0.key": c["layer.0.key"][0]}), "(batch, kv_heads, tokens, head_dim)"),
        (lambda c: c.update({"layer.1.key": c["layer.1.key"][:, :, :5]}), "differs from the other layers"),
        # A cold tier is whole, consistent in itself, and shaped like the hot layers.
        (lambda c: c.update(make_cold()) or c.pop("cold.layer.1.value"), "missing cold.layer.1.value"),
        (
            lambda c: c.update({"cold.input_ids": make_cold()["cold.input_ids"]}),
            "the cold tier is all of its 6 tensors or none; missing cold.position_ids, cold.layer.0.key,",
        ),
        (lambda c: c.update(make_cold(layers=3)), "cold.layer.2.key: the header declares 2 layers"),
        (
            lambda c: c.update({**make_cold(), "cold.layer.1.key": make_cold(tokens=4)["cold.layer.1.key"]}),
            "cold.layer.1.key: 4 cold tokens, but cold.input_ids has 5",
        ),
        (
            lambda c: c.update({**make_cold(), "cold.position_ids": make_cold(tokens=6)["cold.position_ids"]}),
            "cold.position_ids: 6 cold tokens, but cold.input_ids has 5",
        ),
        (
            lambda c: c.update({**make_cold(), "cold.input_ids": make_cold()["cold.input_ids"].astype(np.int32)}),
            "cold.input_ids is <i4, expected int64",
        ),
        (
            lambda c: c.update({**make_cold(), "cold.position_ids": make_cold()["cold.position_ids"][0]}),
            "cold.position_ids: expected shape [1, cold tokens], got [5]",
        ),
        (
            lambda c: c.update({**make_cold(), "cold.layer.0.key": make_cold()["cold.layer.0.key"].view(np.float16)}),
            "cold.layer.0.key is <f2, but the header says the cache is float32",
        ),
        (
            lambda c: c.update(
                {**make_cold(), "cold.layer.0.value": np.concatenate([make_cold()["cold.layer.0.value"]] * 2)}
            ),
            "cold.layer.0.value: a cold layer tensor has batch 1",
        ),
        (
            lambda c: c.update({**make_cold(), "cold.layer.1.key": make_cold(heads=2)["cold.layer.1.key"]}),
            "cold.layer.1.key: (kv_heads, head_dim) (2, 8) differs from layer.1.key's (3, 8)",
        ),
        (
            lambda c: c.update({**make_cold(), "cold.layer.1.value": make_cold(head_dim=4)["cold.layer.1.value"]}),
            "cold.layer.1.value: (kv_heads, head_dim) (3, 4) differs from layer.1.value's (3, 8)",
        ),
    ],
)
def test_bad_input_is_refused_and_leaves_nothing(file_store: SnapshotStore, mutate, message: str) -> None:  # type: ignore[no-untyped-def]
    cache = make_cache()
    mutate(cache)
    with pytest.raises(InvalidArgument, match=re.escape(message)):
        session = file_store.begin(header())
        try:
            for name, array in cache.items():
                session.add(name, array.dtype.str, array.shape, bytearray(array.tobytes()))
            session.finish()
        except BaseException:
            session.abort()
            raise
    assert list(file_store.backend.list_ids()) == []


def test_bad_headers_are_refused_before_anything_is_written(file_store: SnapshotStore) -> None:
    cases = [
        (header(session_id=""), "session_id is required"),
        (header(dtype="float64"), "dtype 'float64'"),
        (header(layers=0), "num_layers 0"),
        (header(obfuscation=["rot13"]), "unknown obfuscation step"),
        (header(tokenizer_fingerprint=""), "tokenizer_fingerprint is required"),
    ]
    for head, message in cases:
        with pytest.raises(InvalidArgument, match=message):
            file_store.begin(head)
    assert list(file_store.backend.list_ids()) == []
    session = file_store.begin(header())
    with pytest.raises(InvalidArgument, match="needs 96 bytes, got 95"):
        session.add("input_ids", "<i8", [1, 12], bytearray(95))
    with pytest.raises(InvalidArgument, match="unknown tensor dtype"):
        session.add("input_ids", "float128x", [1, 12], bytearray(96))
    with pytest.raises(InvalidArgument, match="not numeric"):
        session.add("input_ids", "|O", [1, 12], bytearray(96))
    session.add("input_ids", "<i8", [1, 12], bytearray(96))
    with pytest.raises(InvalidArgument, match="sent twice"):
        session.add("input_ids", "<i8", [1, 12], bytearray(96))
    session.abort()
