"""The snapshot service as a real process over real gRPC: streamed save and load with no message-size ceiling, list,
delete, ownership, refusals before the first chunk, clean-up of refused or cancelled saves, crash safety, metrics."""

from __future__ import annotations

import os
import re
import signal
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from haloweave.snapshot.v1 import snapshot_pb2

from devstack.procs import wait_until
from devstack.seaweed import SeaweedS3
from services.common.grpc_server import MAX_MESSAGE_BYTES
from services.snapshot import layout
from tests.snapshot.support import (
    ServiceProcess,
    assert_bit_exact,
    chunk_requests,
    header,
    header_pb,
    load_request,
    make_cache,
    receive,
    stub,
)

MASTER = os.urandom(32).hex()


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    workdir = tmp_path_factory.mktemp("snapshot-service")
    server = ServiceProcess(workdir, (workdir / "snapshots").as_uri(), MASTER).wait_healthy()
    try:
        yield server
    finally:
        server.stop()


def folders(service: ServiceProcess) -> list[str]:
    root = Path(service.url.removeprefix("file://"))
    return sorted(p.name for p in root.iterdir()) if root.exists() else []


def save(service: ServiceProcess, cache: dict[str, np.ndarray], **kw: object) -> snapshot_pb2.SnapshotInfo:
    layers = sum(1 for n in cache if n.startswith("layer.") and n.endswith(".key"))
    info: snapshot_pb2.SnapshotInfo = stub(service.addr).Save(chunk_requests(header(layers=layers, **kw), cache))
    return info


def test_a_cache_larger_than_the_message_limit_round_trips_bit_exact(service: ServiceProcess) -> None:
    # One tensor alone is larger than the 64 MiB message limit: only chunked streaming can carry it.
    cache = make_cache(layers=1, heads=4, tokens=4352, head_dim=1024)
    assert cache["layer.0.key"].nbytes > MAX_MESSAGE_BYTES
    info = save(service, cache)
    assert info.tokens == 4352 and info.session_id == "s-owner" and info.bytes > 2 * MAX_MESSAGE_BYTES
    head, arrays, largest = receive(stub(service.addr).Load(load_request(info.snapshot_id)))
    assert largest <= 512 * 1024
    assert (head.session_id, head.model, head.dtype, head.cache_impl, head.num_layers) == (
        "s-owner",
        "SmolLM2-135M-Instruct",
        "float32",
        "dynamic",
        1,
    )
    assert head.tracker_state == b"\x08\x01tracker-state"
    assert list(head.obfuscation) == ["rotate_heads", "xor_mask", "remap_ids"]
    assert_bit_exact(arrays, cache)
    stub(service.addr).Delete(snapshot_pb2.DeleteRequest(session_id="s-owner", snapshot_id=info.snapshot_id))


@pytest.mark.parametrize("cold", [7, 0])
def test_a_cache_with_a_cold_tier_round_trips_bit_exact(service: ServiceProcess, cold: int) -> None:
    cache = make_cache(layers=3, tokens=20, cold=cold)
    info = save(service, cache, session_id="s-cold")  # every obfuscation step: rotate_heads, xor_mask, remap_ids
    assert info.tokens == 20
    head, arrays, _ = receive(stub(service.addr).Load(load_request(info.snapshot_id, session_id="s-cold")))
    assert list(head.obfuscation) == ["rotate_heads", "xor_mask", "remap_ids"]
    assert list(arrays) == layout.tensor_names(3, cold=True)  # hot tensors first, then the cold tier
    assert_bit_exact(arrays, cache)
    # Stored obfuscated: no cold layer is on disk as it was sent (the files are ciphertext anyway).
    root = Path(service.url.removeprefix("file://")) / info.snapshot_id
    if cold:
        assert cache["cold.layer.0.key"].tobytes() not in (root / "cold/past_key_values/0_key.npy").read_bytes()
    # One cold file missing: DATA_LOSS, and not a single message before it.
    (root / "cold/past_key_values/2_value.npy").unlink()
    received = []
    with pytest.raises(grpc.RpcError) as error:
        for response in stub(service.addr).Load(load_request(info.snapshot_id, session_id="s-cold")):
            received.append(response)
    assert (
        error.value.code() == grpc.StatusCode.DATA_LOSS and "cold/past_key_values/2_value.npy" in error.value.details()
    )
    assert received == []


def test_a_partial_cold_tier_is_refused_on_save_and_leaves_nothing(service: ServiceProcess) -> None:
    before = folders(service)
    cache = make_cache(layers=2, cold=4)
    del cache["cold.layer.1.key"], cache["cold.position_ids"]
    with pytest.raises(grpc.RpcError) as error:
        save(service, cache, session_id="s-cold-partial")
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "the cold tier is all of its 6 tensors or none; missing cold.position_ids, cold.layer.1.key" in (
        error.value.details()
    )
    assert folders(service) == before


def test_list_delete_and_ownership(service: ServiceProcess) -> None:
    client = stub(service.addr)
    mine = [save(service, make_cache(seed=i), session_id="s-list") for i in range(2)]
    theirs = save(service, make_cache(), session_id="s-else")
    listed = client.List(snapshot_pb2.ListRequest(session_id="s-list")).snapshots
    assert {s.snapshot_id for s in listed} == {m.snapshot_id for m in mine}
    assert [s.created_at for s in listed] == sorted((s.created_at for s in listed), reverse=True)
    assert all(s.session_id == "s-list" and s.model == "SmolLM2-135M-Instruct" and s.bytes > 0 for s in listed)
    for call in (
        lambda: list(client.Load(load_request(theirs.snapshot_id, session_id="s-list"))),
        lambda: client.Delete(snapshot_pb2.DeleteRequest(session_id="s-list", snapshot_id=theirs.snapshot_id)),
    ):
        with pytest.raises(grpc.RpcError) as error:
            call()
        assert error.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "belongs to another session" in error.value.details()
    client.Delete(snapshot_pb2.DeleteRequest(session_id="s-list", snapshot_id=mine[0].snapshot_id))
    assert [s.snapshot_id for s in client.List(snapshot_pb2.ListRequest(session_id="s-list")).snapshots] == [
        mine[1].snapshot_id
    ]
    for call in (
        lambda: list(client.Load(load_request(mine[0].snapshot_id, session_id="s-list"))),
        lambda: client.Delete(snapshot_pb2.DeleteRequest(session_id="s-list", snapshot_id=mine[0].snapshot_id)),
    ):
        with pytest.raises(grpc.RpcError) as error:
            call()
        assert error.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as error:
        client.List(snapshot_pb2.ListRequest(session_id=""))
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_refusals_arrive_before_any_chunk(service: ServiceProcess) -> None:
    cache = make_cache()
    info = save(service, cache, session_id="s-refuse")
    client = stub(service.addr)
    refusals = {
        "model": (grpc.StatusCode.FAILED_PRECONDITION, "does not fit this worker"),
        "dtype": (grpc.StatusCode.FAILED_PRECONDITION, "does not fit this worker"),
        "tokenizer_fingerprint": (grpc.StatusCode.FAILED_PRECONDITION, "does not fit this worker"),
    }
    for field, (code, message) in refusals.items():
        received = []
        with pytest.raises(grpc.RpcError) as error:
            for response in client.Load(load_request(info.snapshot_id, session_id="s-refuse", **{field: "other"})):
                received.append(response)
        assert error.value.code() == code and message in error.value.details()
        assert received == []
    # Tamper with one stored byte: DATA_LOSS, and not a single message before it.
    root = Path(service.url.removeprefix("file://")) / info.snapshot_id
    target = root / "past_key_values" / "1_value.npy"
    original = target.read_bytes()
    target.write_bytes(original[:100] + bytes([original[100] ^ 1]) + original[101:])
    received = []
    with pytest.raises(grpc.RpcError) as error:
        for response in client.Load(load_request(info.snapshot_id, session_id="s-refuse")):
            received.append(response)
    assert error.value.code() == grpc.StatusCode.DATA_LOSS and "1_value.npy" in error.value.details()
    assert received == []
    target.write_bytes(original)
    assert_bit_exact(receive(client.Load(load_request(info.snapshot_id, session_id="s-refuse")))[1], cache)


def _without_header(requests: Iterator[snapshot_pb2.SaveRequest]) -> Iterator[snapshot_pb2.SaveRequest]:
    next(requests)
    yield from requests


def _without(name: str, requests: Iterator[snapshot_pb2.SaveRequest]) -> Iterator[snapshot_pb2.SaveRequest]:
    return (r for r in requests if not (r.HasField("chunk") and r.chunk.name == name))


def _truncated(requests: Iterator[snapshot_pb2.SaveRequest]) -> Iterator[snapshot_pb2.SaveRequest]:
    for request in requests:
        if request.HasField("chunk") and request.chunk.name == "layer.0.value":
            request.chunk.data = request.chunk.data[:-4]
        yield request


def _two_headers(requests: Iterator[snapshot_pb2.SaveRequest]) -> Iterator[snapshot_pb2.SaveRequest]:
    first = next(requests)
    yield first
    yield first
    yield from requests


@pytest.mark.parametrize(
    ("broken", "message"),
    [
        (_without_header, "starts with its header"),
        (lambda r: _without("layer.1.key", r), "missing layer.1.key"),
        (_truncated, "layer.0.value' is truncated"),
        (_two_headers, "one header"),
    ],
)
def test_bad_save_streams_are_refused_and_leave_nothing(service: ServiceProcess, broken, message: str) -> None:  # type: ignore[no-untyped-def]
    before = folders(service)
    with pytest.raises(grpc.RpcError) as error:
        stub(service.addr).Save(broken(chunk_requests(header(session_id="s-bad"), make_cache())))
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in error.value.details()
    assert folders(service) == before


def test_a_cancelled_save_leaves_nothing(service: ServiceProcess) -> None:
    before = folders(service)
    sent_some = threading.Event()
    release = threading.Event()

    def stalled() -> Iterator[snapshot_pb2.SaveRequest]:
        for i, request in enumerate(chunk_requests(header(session_id="s-cancel"), make_cache(tokens=4000))):
            yield request
            if i == 4:
                sent_some.set()
                release.wait(30)
                return

    future = stub(service.addr).Save.future(stalled())
    assert sent_some.wait(30)
    wait_until(lambda: len(folders(service)) > len(before), 30, "the save to claim its folder")
    future.cancel()
    release.set()
    wait_until(lambda: folders(service) == before, 30, "the cancelled save's folder to be removed")


def test_a_crash_mid_save_leaves_nothing_loadable_and_the_orphan_is_collected(tmp_path: Path) -> None:
    url = (tmp_path / "snapshots").as_uri()
    doomed = ServiceProcess(tmp_path, url, MASTER).wait_healthy()
    stalled_in_layer = threading.Event()
    release = threading.Event()

    def stalled() -> Iterator[snapshot_pb2.SaveRequest]:
        for request in chunk_requests(header(session_id="s-crash"), make_cache(tokens=4000)):
            if request.HasField("chunk") and request.chunk.name == "layer.1.key":
                stalled_in_layer.set()
                release.wait(30)
                return
            yield request

    future = stub(doomed.addr).Save.future(stalled())
    try:
        assert stalled_in_layer.wait(30)
        root = tmp_path / "snapshots"
        wait_until(lambda: any(root.glob("*/past_key_values/0_value.npy")), 30, "the first layers to be written")
        doomed.proc.signal(signal.SIGKILL)
        doomed.proc.popen.wait(10)
    finally:
        release.set()
        doomed.stop()
    with pytest.raises(grpc.FutureCancelledError if future.cancelled() else grpc.RpcError):
        future.result()
    (orphan,) = [p.name for p in root.iterdir()]
    restarted = ServiceProcess(tmp_path, url, MASTER, {"HALOWEAVE_SNAPSHOT_GC_GRACE_S": "0"}).wait_healthy()
    try:
        wait_until(lambda: not (root / orphan).exists(), 30, "start-up garbage collection", restarted.proc)
        client = stub(restarted.addr)
        assert list(client.List(snapshot_pb2.ListRequest(session_id="s-crash")).snapshots) == []
        with pytest.raises(grpc.RpcError) as error:
            list(client.Load(load_request(orphan, session_id="s-crash")))
        assert error.value.code() == grpc.StatusCode.NOT_FOUND
    finally:
        restarted.stop()


def test_metrics_count_bytes_failures_and_durations(service: ServiceProcess) -> None:
    info = save(service, make_cache(), session_id="s-metrics")
    receive(stub(service.addr).Load(load_request(info.snapshot_id, session_id="s-metrics")))
    with pytest.raises(grpc.RpcError):
        list(stub(service.addr).Load(load_request(info.snapshot_id, session_id="s-metrics", model="other")))
    text = urllib.request.urlopen(service.metrics_url, timeout=5).read().decode()

    def value(pattern: str) -> float:
        match = re.search(rf"^{pattern} ([0-9.e+]+)$", text, re.MULTILINE)
        assert match, f"{pattern} not exported"
        return float(match.group(1))

    assert value(r'haloweave_snapshot_bytes_total\{op="save"\}') >= info.bytes
    assert value(r'haloweave_snapshot_bytes_total\{op="load"\}') > 0
    assert value(r'haloweave_snapshot_failures_total\{op="load"\}') >= 1
    assert value(r'haloweave_snapshot_duration_seconds_count\{backend="file",op="save"\}') >= 1
    assert value(r'haloweave_snapshot_duration_seconds_count\{backend="file",op="load"\}') >= 1


def test_s3_backed_service_round_trip_and_bad_credentials(tmp_path: Path, seaweed: SeaweedS3, s3_bucket: str) -> None:
    url = f"s3://{s3_bucket}/svc"
    server = ServiceProcess(tmp_path, url, MASTER, seaweed.env()).wait_healthy()
    try:
        cache = make_cache(layers=2)
        info = save(server, cache, session_id="s-s3")
        _, arrays, _ = receive(stub(server.addr).Load(load_request(info.snapshot_id, session_id="s-s3")))
        assert_bit_exact(arrays, cache)
    finally:
        server.stop()
    refused = ServiceProcess(tmp_path, url, MASTER, {**seaweed.env(), "AWS_SECRET_ACCESS_KEY": "wrong"})
    assert refused.proc.popen.wait(60) != 0
    assert "refused access to the bucket" in refused.proc.tail()
    refused.stop()


def test_header_conversion_keeps_every_field() -> None:
    h = header(layers=7, obfuscation=["xor_mask"])
    pb = header_pb(h)
    assert (pb.num_layers, list(pb.obfuscation), pb.tracker_state) == (7, ["xor_mask"], h.tracker_state)
