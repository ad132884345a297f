"""The store on a real S3 server (SeaweedFS, started by the tests): round trips, credentials enforced, unique names
through conditional puts, tamper refusal, and crash safety with garbage collection."""

from __future__ import annotations

import threading
from datetime import UTC, datetime

import numpy as np
import pytest

from devstack.seaweed import SeaweedS3
from services.common.errors import DataLoss, NotFound, Unavailable
from services.snapshot.backends import open_backend
from services.snapshot.backends.s3 import S3Backend
from services.snapshot.saving import SaveSession
from services.snapshot.store import SnapshotStore
from tests.snapshot.support import assert_bit_exact, header, load, make_cache, new_master, save


def s3_store(bucket: str, prefix: str = "snaps") -> SnapshotStore:
    return SnapshotStore(open_backend(f"s3://{bucket}/{prefix}"), new_master())


def test_round_trip_with_multipart_sized_tensors(s3_bucket: str, seaweed: SeaweedS3) -> None:
    store = s3_store(s3_bucket)
    # 3 heads x 2048 tokens x 1024 dims x 4 bytes = 24 MiB per tensor: above the multipart threshold.
    cache = make_cache(layers=1, tokens=2048, head_dim=1024)
    info = save(store, header(layers=1), cache)
    keys = {o["Key"] for o in seaweed.client().list_objects_v2(Bucket=s3_bucket, Prefix="snaps/")["Contents"]}
    assert f"snaps/{info.snapshot_id}/manifest.json" in keys
    assert f"snaps/{info.snapshot_id}/past_key_values/0_value.npy" in keys
    assert f"snaps/{info.snapshot_id}/metadata/symbolic_map.npy" in keys
    assert [i.snapshot_id for i in store.list_session("s-owner")] == [info.snapshot_id]
    assert_bit_exact(load(store, info), cache)
    store.delete("s-owner", info.snapshot_id)
    assert "Contents" not in seaweed.client().list_objects_v2(Bucket=s3_bucket, Prefix="snaps/")
    with pytest.raises(NotFound):
        load(store, info)


def test_wrong_secret_is_refused(s3_bucket: str, seaweed: SeaweedS3, monkeypatch: pytest.MonkeyPatch) -> None:
    store = s3_store(s3_bucket)  # the right credentials work
    info = save(store, header(), make_cache())
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    with pytest.raises(Unavailable, match=r"refused access to the bucket .*AWS_SECRET_ACCESS_KEY.*: 403"):
        open_backend(f"s3://{s3_bucket}/snaps")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "nobody")
    with pytest.raises(Unavailable, match="refused access to the bucket"):
        open_backend(f"s3://{s3_bucket}/snaps")
    # Data calls are refused too, not only the bucket check.
    from botocore.exceptions import ClientError

    with pytest.raises(ClientError, match="SignatureDoesNotMatch"):
        seaweed.client("not-the-secret").get_object(Bucket=s3_bucket, Key=f"snaps/{info.snapshot_id}/manifest.json")


def test_a_missing_bucket_is_created(s3_bucket: str, seaweed: SeaweedS3) -> None:
    backend = open_backend(f"s3://{s3_bucket}-new/x")
    assert isinstance(backend, S3Backend)
    seaweed.client().head_bucket(Bucket=f"{s3_bucket}-new")


def test_concurrent_claims_of_one_name_have_one_winner(s3_bucket: str) -> None:
    fixed = datetime(2026, 7, 4, 9, 8, 7, tzinfo=UTC)
    stores = [SnapshotStore(open_backend(f"s3://{s3_bucket}/c"), new_master(), clock=lambda: fixed) for _ in range(6)]
    sessions: list[SaveSession] = []
    start = threading.Barrier(len(stores))

    def run(store: SnapshotStore) -> None:
        start.wait()
        sessions.append(store.begin(header()))

    threads = [threading.Thread(target=run, args=(s,)) for s in stores]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    names = [session.snapshot_id for session in sessions]
    for session in sessions:
        session.abort()
    assert len(names) == len(stores) and len(set(names)) == len(stores)
    assert set(names) == {"m7d4x9x8x7"} | {f"m7d4x9x8x7_{n}" for n in range(2, 7)}


def test_tampered_object_fails_the_load(s3_bucket: str, seaweed: SeaweedS3) -> None:
    store = s3_store(s3_bucket)
    cache = make_cache()
    info = save(store, header(), cache)
    client = seaweed.client()
    key = f"snaps/{info.snapshot_id}/past_key_values/1_key.npy"
    original = client.get_object(Bucket=s3_bucket, Key=key)["Body"].read()
    tampered = bytearray(original)
    tampered[len(tampered) // 2] ^= 0x80
    client.put_object(Bucket=s3_bucket, Key=key, Body=bytes(tampered))
    with pytest.raises(DataLoss, match=r"1_key\.npy fails authentication"):
        load(store, info)
    client.put_object(Bucket=s3_bucket, Key=key, Body=original)
    assert_bit_exact(load(store, info), cache)


def test_interrupted_save_is_invisible_and_collected(s3_bucket: str) -> None:
    store = s3_store(s3_bucket)
    cache = make_cache()
    session = store.begin(header())
    session.add("layer.0.key", "<f4", cache["layer.0.key"].shape, bytearray(cache["layer.0.key"].tobytes()))
    orphan = session.snapshot_id
    assert store.list_session("s-owner") == []
    restarted = SnapshotStore(store.backend, store.master)
    assert restarted.collect_garbage(grace_s=3600) == []
    assert restarted.collect_garbage(grace_s=0) == [orphan]
    assert store.backend.list_ids() == []


def test_bad_urls_are_refused_clearly() -> None:
    for url, message in [
        ("ftp://x/y", "unsupported snapshot store"),
        ("s3:///prefix", "needs a bucket"),
        ("file://host/dir", "absolute path"),
    ]:
        with pytest.raises(ValueError, match=message):
            open_backend(url)
    assert np  # numpy is imported for the helpers' arrays
