"""The bench's side of the wire: a snapshot service process, and streamed save/load as a worker does them."""

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
from services.inference import snapshot_io

MODEL = "SmolLM2-135M-Instruct"
FINGERPRINT = "bench"
CHAIN = ["rotate_heads", "xor_mask", "remap_ids"]  # the inference worker's default chain


class Service:
    """`python -m services.snapshot` on free ports; stopped by its own pid."""

    def __init__(self, workdir: Path, url: str, env: dict[str, str] | None = None) -> None:
        self.addr = f"127.0.0.1:{free_port()}"
        full_env = {
            "HALOWEAVE_SNAPSHOT_URL": url,
            "HALOWEAVE_SNAPSHOT_LISTEN": self.addr,
            "HALOWEAVE_SNAPSHOT_METRICS_PORT": "0",
            "HALOWEAVE_SNAPSHOT_MASTER_KEY": os.urandom(32).hex(),
            "HALOWEAVE_LOG_LEVEL": "WARNING",
            **(env or {}),
        }
        log = workdir / f"snapshot-{url.split(':')[0]}.log"
        self.proc = Proc("snapshot", python_module("services.snapshot"), full_env, log)
        wait_until(self._healthy, 60, f"snapshot service ({url})", self.proc)
        self.stub = snapshot_pb2_grpc.SnapshotStub(grpc.insecure_channel(self.addr, options=CHANNEL_OPTIONS))

    def _healthy(self) -> bool:
        with grpc.insecure_channel(self.addr) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1)
            return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)

    def stop(self) -> None:
        self.proc.stop()

    def save(self, session_id: str, arrays: dict[str, np.ndarray], dtype: str = "float32") -> snapshot_pb2.SnapshotInfo:
        layers = sum(1 for name in arrays if name.endswith(".key"))
        head = snapshot_pb2.SnapshotHeader(
            session_id=session_id,
            model=MODEL,
            dtype=dtype,
            cache_impl="dynamic",
            tokenizer_fingerprint=FINGERPRINT,
            num_layers=layers,
            obfuscation=CHAIN,
        )
        info: snapshot_pb2.SnapshotInfo = self.stub.Save(_requests(head, arrays))
        return info

    def load(self, session_id: str, snapshot_id: str, dtype: str = "float32") -> dict[str, np.ndarray]:
        request = snapshot_pb2.LoadRequest(
            session_id=session_id, snapshot_id=snapshot_id, model=MODEL, dtype=dtype, tokenizer_fingerprint=FINGERPRINT
        )
        # Reassembled as the inference worker does it (checked, filled in place).
        assembler = snapshot_io.Assembler()
        for response in self.stub.Load(request):
            if not response.HasField("header"):
                assembler.add(response.chunk)
        return assembler.arrays()

    def delete(self, session_id: str, snapshot_id: str) -> None:
        self.stub.Delete(snapshot_pb2.DeleteRequest(session_id=session_id, snapshot_id=snapshot_id))


def _requests(head: snapshot_pb2.SnapshotHeader, arrays: dict[str, np.ndarray]) -> Iterator[snapshot_pb2.SaveRequest]:
    yield snapshot_pb2.SaveRequest(header=head)
    for chunk in to_chunks(arrays):  # 1 MiB chunks, as the inference worker sends them
        yield snapshot_pb2.SaveRequest(chunk=chunk)


def synthetic_cache(total_bytes: int, layers: int = 30, heads: int = 3, head_dim: int = 64) -> dict[str, np.ndarray]:
    """A cache with SmolLM2's geometry, as many tokens as make `total_bytes` of fp32 keys and values."""
    tokens = max(1, total_bytes // (layers * 2 * heads * head_dim * 4))
    rng = np.random.default_rng(0)
    arrays: dict[str, np.ndarray] = {
        "input_ids": rng.integers(0, 49152, (1, tokens), dtype=np.int64),
        "attention_mask": np.ones((1, tokens), dtype=np.int64),
        "position_ids": np.arange(tokens, dtype=np.int64)[None],
    }
    block = rng.standard_normal((1, heads, tokens, head_dim), dtype=np.float32)
    for i in range(layers):
        # Distinct tensors (not views of one) so nothing is accidentally shared or cached.
        arrays[f"layer.{i}.key"] = block + np.float32(i)
        arrays[f"layer.{i}.value"] = block - np.float32(i)
    return arrays


def cache_bytes(arrays: dict[str, np.ndarray]) -> int:
    return sum(a.nbytes for a in arrays.values())
