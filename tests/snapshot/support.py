"""Helpers for the snapshot tests: synthetic caches shaped like SmolLM2's, and saving them through a store."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc
from haloweave.snapshot.v1 import snapshot_pb2, snapshot_pb2_grpc

from devstack.procs import Proc, free_port, python_module, wait_until
from services.common.grpc_server import CHANNEL_OPTIONS
from services.common.tensor_chunks import to_chunks
from services.snapshot.crypto import MasterKey
from services.snapshot.store import SnapshotStore
from services.snapshot.tensors import Header, Info

MODEL = "SmolLM2-135M-Instruct"
FINGERPRINT = "0123456789abcdef"


def make_cache(
    layers: int = 2,
    heads: int = 3,
    tokens: int = 12,
    head_dim: int = 8,
    seed: int = 0,
    dtype: str = "<f4",
    cold: int | None = None,
) -> dict[str, np.ndarray]:
    """Random tensors of every name a snapshot holds; the floats carry arbitrary bit patterns, NaNs included.

    `cold=C` adds a cold tier of C tokens (after the hot tensors, which stay those of `cold=None`)."""
    rng = np.random.default_rng(seed)
    cache: dict[str, np.ndarray] = {
        "input_ids": rng.integers(0, 49152, (1, tokens), dtype=np.int64),
        "attention_mask": np.ones((1, tokens), dtype=np.int64),
        "position_ids": np.sort(rng.choice(4 * tokens + 1, tokens, replace=False)).astype(np.int64)[None],
    }
    itemsize = np.dtype(dtype).itemsize
    for i in range(layers):
        for kind in ("key", "value"):
            raw = rng.integers(0, 256, heads * tokens * head_dim * itemsize, dtype=np.uint8)
            cache[f"layer.{i}.{kind}"] = raw.view(dtype).reshape(1, heads, tokens, head_dim)
    if cold is not None:
        cache.update(make_cold(layers, heads, cold, head_dim, seed + 1, dtype))
    return cache


def make_cold(
    layers: int = 2, heads: int = 3, tokens: int = 5, head_dim: int = 8, seed: int = 1, dtype: str = "<f4"
) -> dict[str, np.ndarray]:
    """A cold tier of `tokens` pruned tokens: ids, their own (sparse) positions, and every layer's keys and values."""
    rng = np.random.default_rng(seed)
    cold: dict[str, np.ndarray] = {
        # Ids beyond what the hot input_ids (and so remap_ids' permutation) span: the last one is always 65535.
        "cold.input_ids": rng.integers(0, 65536, (1, tokens), dtype=np.int64),
        "cold.position_ids": np.sort(rng.choice(8 * tokens + 1, tokens, replace=False)).astype(np.int64)[None],
    }
    if tokens:
        cold["cold.input_ids"][0, -1] = 65535
    itemsize = np.dtype(dtype).itemsize
    for i in range(layers):
        for kind in ("key", "value"):
            raw = rng.integers(0, 256, heads * tokens * head_dim * itemsize, dtype=np.uint8)
            cold[f"cold.layer.{i}.{kind}"] = raw.view(dtype).reshape(1, heads, tokens, head_dim)
    return cold


def header(layers: int = 2, session_id: str = "s-owner", obfuscation: list[str] | None = None, **kw: object) -> Header:
    fields: dict[str, object] = {
        "session_id": session_id,
        "model": MODEL,
        "dtype": "float32",
        "cache_impl": "dynamic",
        "tokenizer_fingerprint": FINGERPRINT,
        "num_layers": layers,
        "tracker_state": b"\x08\x01tracker-state",
        "obfuscation": ["rotate_heads", "xor_mask", "remap_ids"] if obfuscation is None else obfuscation,
    }
    fields.update(kw)
    return Header(**fields)  # type: ignore[arg-type]


def save(store: SnapshotStore, head: Header, cache: dict[str, np.ndarray]) -> Info:
    session = store.begin(head)
    for name, array in cache.items():
        session.add(name, array.dtype.str, array.shape, bytearray(array.tobytes()))
    return session.finish()


def load(store: SnapshotStore, info: Info, session_id: str = "s-owner", **kw: str) -> dict[str, np.ndarray]:
    args = {"model": MODEL, "dtype": "float32", "tokenizer_fingerprint": FINGERPRINT, **kw}
    loaded = store.load(session_id, info.snapshot_id, args["model"], args["dtype"], args["tokenizer_fingerprint"])
    return {t.name: t.array for t in loaded.tensors}


def assert_bit_exact(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    assert set(got) == set(want)
    for name, array in want.items():
        assert got[name].dtype == array.dtype, name
        assert got[name].shape == array.shape, name
        assert got[name].tobytes() == array.tobytes(), f"{name} differs"


def new_master() -> MasterKey:
    return MasterKey(os.urandom(32))


# -- the service as a real process -------------------------------------------------------------------------------


class ServiceProcess:
    """`python -m services.snapshot` on free ports, stopped by its own pid."""

    def __init__(self, workdir: Path, url: str, master_key_hex: str, extra_env: dict[str, str] | None = None) -> None:
        self.workdir = workdir
        self.url = url
        self.port = free_port()
        self.metrics_port = free_port()
        self.addr = f"127.0.0.1:{self.port}"
        self.metrics_url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        env = {
            "HALOWEAVE_SNAPSHOT_URL": url,
            "HALOWEAVE_SNAPSHOT_LISTEN": self.addr,
            "HALOWEAVE_SNAPSHOT_METRICS_PORT": str(self.metrics_port),
            "HALOWEAVE_SNAPSHOT_MASTER_KEY": master_key_hex,
            **(extra_env or {}),
        }
        self.proc = Proc("snapshot", python_module("services.snapshot"), env, workdir / f"snapshot-{self.port}.log")

    def wait_healthy(self, timeout: float = 30.0) -> ServiceProcess:
        wait_until(lambda: health_serving(self.addr), timeout, f"snapshot service on {self.addr}", self.proc)
        return self

    def stop(self) -> None:
        self.proc.stop()


def health_serving(addr: str) -> bool:
    with grpc.insecure_channel(addr) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1)
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


def header_pb(h: Header) -> snapshot_pb2.SnapshotHeader:
    return snapshot_pb2.SnapshotHeader(
        session_id=h.session_id,
        model=h.model,
        dtype=h.dtype,
        cache_impl=h.cache_impl,
        tokenizer_fingerprint=h.tokenizer_fingerprint,
        num_layers=h.num_layers,
        tracker_state=h.tracker_state,
        obfuscation=h.obfuscation,
    )


def chunk_requests(
    h: Header, cache: dict[str, np.ndarray], chunk_bytes: int = 1 << 20
) -> Iterator[snapshot_pb2.SaveRequest]:
    """A Save stream as a worker sends it: the header, then every tensor in chunks."""
    yield snapshot_pb2.SaveRequest(header=header_pb(h))
    for chunk in to_chunks(cache, chunk_bytes):
        yield snapshot_pb2.SaveRequest(chunk=chunk)


def stub(addr: str) -> snapshot_pb2_grpc.SnapshotStub:
    return snapshot_pb2_grpc.SnapshotStub(grpc.insecure_channel(addr, options=CHANNEL_OPTIONS))


def load_request(snapshot_id: str, session_id: str = "s-owner", **kw: str) -> snapshot_pb2.LoadRequest:
    fields = {"model": MODEL, "dtype": "float32", "tokenizer_fingerprint": FINGERPRINT, **kw}
    return snapshot_pb2.LoadRequest(session_id=session_id, snapshot_id=snapshot_id, **fields)


def receive(
    responses: Iterator[snapshot_pb2.LoadResponse],
) -> tuple[snapshot_pb2.SnapshotHeader, dict[str, np.ndarray], int]:
    """Reassembles a Load stream; returns the header, the tensors and the largest chunk seen."""
    head: snapshot_pb2.SnapshotHeader | None = None
    parts: dict[str, list[bytes]] = {}
    meta: dict[str, tuple[str, list[int]]] = {}
    largest = 0
    for response in responses:
        if response.HasField("header"):
            assert head is None, "two headers"
            head = response.header
            continue
        assert head is not None, "a chunk before the header"
        chunk = response.chunk
        largest = max(largest, len(chunk.data))
        if chunk.name not in parts:
            meta[chunk.name] = (chunk.dtype, list(chunk.shape))
            parts[chunk.name] = []
        parts[chunk.name].append(chunk.data)
    assert head is not None
    arrays = {name: np.frombuffer(b"".join(p), dtype=meta[name][0]).reshape(meta[name][1]) for name, p in parts.items()}
    return head, arrays, largest
