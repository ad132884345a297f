"""Fuzzing the snapshot service's gRPC API (protos/haloweave/snapshot/v1/snapshot.proto).

Save streams are built from a small real cache and then broken: a chunk dropped, duplicated or moved, a tensor renamed
(path traversal, absolute paths, NUL bytes, a trailing newline, unknown names), its dtype or shape changed, its data
cut short or padded, `last` set wrongly, no header or two, headers with odd fields (unknown dtype or obfuscation
steps, zero or billions of layers); or made of random chunks altogether. Load, Delete and List get snapshot ids that are
paths, malformed, well-formed but unknown, or another session's, and loaders of another model, dtype or tokenizer. And
every method gets bytes that decode to no message.

Judged as for the tracker (bench.fuzz.grpc_common): a refusal names the problem in its status; UNKNOWN, INTERNAL or a
server that stops answering is a crash. A refused call leaves every file of the store byte-identical and creates
nothing anywhere in the service's directory; an accepted Save loads back bit-exact (then it is deleted again).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np
from haloweave.snapshot.v1 import snapshot_pb2 as pb
from haloweave.snapshot.v1 import snapshot_pb2_grpc
from hypothesis import strategies as st

from bench.fuzz.explore import weighted
from bench.fuzz.grpc_common import (
    CALL_TIMEOUT_S,
    INT64,
    TEXTS,
    UINT32,
    check_health,
    corrupt,
    judge,
    open_channel,
    raw_stream,
    raw_unary,
)
from bench.fuzz.tally import Crash, Tally, Verdict
from bench.fuzz.target import Target, tree
from services.common.tensor_chunks import tensor_chunks

SERVICE = "/haloweave.snapshot.v1.Snapshot/"
OWNER = "fuzz-owner"
MODEL, DTYPE, FINGERPRINT = "SmolLM2-135M-Instruct", "float32", "0123456789abcdef"
STEPS = ("rotate_heads", "xor_mask", "remap_ids")
# Names and ids that try to reach outside the store, or to be two names for one file.
PATHS = (
    "../../etc/passwd",
    "..",
    ".",
    "/etc/passwd",
    "%2e%2e%2f%2e%2e%2fetc",
    "..%2f..%2f",
    "m1d1x1x1x1/../../x",
    "m1d1x1x1x1\n",
    "m1d1x1x1x1\x00",
    "a\x00b",
    "..\\..\\x",
    "m1d1x1x1x1/",
    "~/.ssh/id_rsa",
    "m1d1x1x1x1/manifest.json",
    "input_ids/../../../../x",
    "layer.0.key\n",
    "layer.0.key/../../x",
    "cold.layer.0.value\n",
    "past_key_values/0_key.npy",
)
TENSOR_NAMES = ("input_ids", "attention_mask", "position_ids", "layer.0.key", "layer.0.value", "layer.1.key")
TENSOR_NAMES += ("cold.input_ids", "cold.position_ids", "cold.layer.0.key", "cold.layer.0.value", "layer.7.key")


def ids() -> st.SearchStrategy[str]:
    return st.one_of(st.sampled_from(PATHS), st.just("m1d1x1x1x1"), st.just("m12d31x23x59x59_9999"), TEXTS)


def headers() -> st.SearchStrategy[pb.SnapshotHeader]:
    return st.builds(
        pb.SnapshotHeader,
        session_id=st.one_of(st.just(OWNER), TEXTS),
        model=st.one_of(st.just(MODEL), TEXTS),
        dtype=st.one_of(st.sampled_from(["float32", "float16", "bfloat16"]), TEXTS),
        cache_impl=st.one_of(st.just("dynamic"), TEXTS),
        tokenizer_fingerprint=st.one_of(st.just(FINGERPRINT), TEXTS),
        num_layers=st.one_of(st.integers(1, 2), UINT32),
        tracker_state=st.binary(max_size=32),
        obfuscation=st.lists(st.one_of(st.sampled_from(STEPS), TEXTS), max_size=4),
    )


def good_header(layers: int, dtype: str = DTYPE, steps: tuple[str, ...] = STEPS) -> pb.SnapshotHeader:
    return pb.SnapshotHeader(
        session_id=OWNER,
        model=MODEL,
        dtype=dtype,
        cache_impl="dynamic",
        tokenizer_fingerprint=FINGERPRINT,
        num_layers=layers,
        tracker_state=b"\x08\x01",
        obfuscation=list(steps),
    )


def cache(layers: int, heads: int, tokens: int, head_dim: int, cold: int | None, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    arrays: dict[str, np.ndarray] = {
        "input_ids": rng.integers(0, 49152, (1, tokens), dtype=np.int64),
        "attention_mask": np.ones((1, tokens), dtype=np.int64),
        "position_ids": np.arange(tokens, dtype=np.int64)[None],
    }
    for i in range(layers):
        for kind in ("key", "value"):
            arrays[f"layer.{i}.{kind}"] = rng.standard_normal((1, heads, tokens, head_dim)).astype("<f4")
    if cold is not None:
        arrays["cold.input_ids"] = rng.integers(0, 49152, (1, cold), dtype=np.int64)
        arrays["cold.position_ids"] = np.arange(tokens, tokens + cold, dtype=np.int64)[None]
        for i in range(layers):
            for kind in ("key", "value"):
                arrays[f"cold.layer.{i}.{kind}"] = rng.standard_normal((1, heads, cold, head_dim)).astype("<f4")
    return arrays


@dataclass(frozen=True)
class Save:
    """A Save stream: `header` (None: none sent first) and the chunks; `arrays` is what a valid one holds."""

    header: pb.SnapshotHeader | None
    chunks: tuple[pb.TensorChunk, ...]
    arrays: tuple[tuple[str, bytes], ...] = ()
    extra_header: bool = False

    def __repr__(self) -> str:
        head = "no header" if self.header is None else _short(self.header)
        names = [f"{c.name!r}{'*' if c.last else ''}({c.dtype},{list(c.shape)},{len(c.data)})" for c in self.chunks]
        return f"Save({head}; {'two headers; ' if self.extra_header else ''}{', '.join(names)[:600]})"


@dataclass(frozen=True)
class Unary:
    method: str
    request: Any

    def __repr__(self) -> str:
        return f"{self.method}({_short(self.request)})"


@dataclass(frozen=True)
class Raw:
    method: str
    payloads: tuple[bytes, ...]


def _mutate(chunks: list[pb.TensorChunk], change: tuple[str, int, Any]) -> list[pb.TensorChunk]:
    kind, index, value = change
    out = [pb.TensorChunk.FromString(c.SerializeToString()) for c in chunks]
    if not out:
        return out
    i = index % len(out)
    if kind == "drop":
        del out[i]
    elif kind == "duplicate":
        out.insert(i, out[i])
    elif kind == "move":
        out.insert(value % len(out), out.pop(i))
    elif kind == "rename":
        name = out[i].name
        for chunk in out:
            if chunk.name == name:
                chunk.name = value
    elif kind == "dtype":
        out[i].dtype = value
    elif kind == "shape":
        del out[i].shape[:]
        out[i].shape.extend(value)
    elif kind == "data":
        out[i].data = out[i].data[: len(out[i].data) // 2] if value else out[i].data + b"\x00\x00\x00\x00"
    elif kind == "last":
        out[i].last = not out[i].last
    elif kind == "empty":  # one tensor sent as a single empty chunk of the given shape
        name = out[i].name
        first = next(c for c in out if c.name == name)
        rest = [c for c in out if c.name != name]
        first.data, first.last = b"", True
        del first.shape[:]
        first.shape.extend(value)
        at = min(i, len(rest))
        out = [*rest[:at], first, *rest[at:]]
    return out


def saves() -> st.SearchStrategy[Save]:
    changes = st.one_of(
        st.none(),
        st.tuples(st.sampled_from(["drop", "duplicate", "move", "last"]), st.integers(0, 50), st.integers(0, 50)),
        st.tuples(st.just("rename"), st.integers(0, 50), st.one_of(st.sampled_from(PATHS + TENSOR_NAMES), TEXTS)),
        st.tuples(
            st.just("dtype"),
            st.integers(0, 50),
            st.one_of(st.sampled_from(["<f2", "<i8", "bfloat16", "<u2", "|V8", "O", "<U4", "M8", "", "(2,)f4"]), TEXTS),
        ),
        st.tuples(
            st.just("shape"),
            st.integers(0, 50),
            st.one_of(
                st.lists(INT64, max_size=5),
                st.just([0, 2**62, 2**62]),
                st.just([2**62] * 20),
                st.just([1, 4, 1 << 30, 8]),
            ),
        ),
        st.tuples(st.just("data"), st.integers(0, 50), st.booleans()),
        st.tuples(
            st.just("empty"),
            st.integers(0, 50),
            st.sampled_from([[0, 2**62, 2**62], [1, 0, 2**40, 2**40], [0] * 70, [1] * 65, [1, 2, 0, 4]]),
        ),
    )

    def valid(
        layers: int,
        heads: int,
        tokens: int,
        head_dim: int,
        cold: int | None,
        steps: list[str],
        chunk: int,
        change: Any,
        seed: int,
        header_kind: str,
    ) -> Save:
        arrays = cache(layers, heads, tokens, head_dim, cold, seed)
        chunks = [c for name, a in arrays.items() for c in tensor_chunks(name, a, chunk)]
        if change is not None:
            chunks = _mutate(chunks, change)
        header = None if header_kind == "none" else good_header(layers, steps=tuple(steps))
        as_bytes = tuple((name, a.tobytes()) for name, a in arrays.items()) if change is None else ()
        return Save(header, tuple(chunks), as_bytes, extra_header=header_kind == "two")

    made = st.builds(
        valid,
        layers=st.integers(1, 2),
        heads=st.integers(1, 2),
        tokens=st.integers(0, 4),
        head_dim=st.integers(1, 4),
        cold=st.one_of(st.none(), st.integers(0, 3)),
        steps=st.lists(st.sampled_from(STEPS), max_size=3),
        chunk=st.sampled_from([8, 64, 1 << 20]),
        change=changes,
        seed=st.integers(0, 3),
        header_kind=st.sampled_from(["good", "good", "good", "good", "none", "two"]),
    )
    chunk = st.builds(
        pb.TensorChunk,
        name=st.one_of(st.sampled_from(PATHS + TENSOR_NAMES), TEXTS),
        dtype=st.one_of(st.sampled_from(["<f4", "<i8", "bfloat16", ""]), TEXTS),
        shape=st.one_of(st.lists(st.integers(0, 4), max_size=4), st.lists(INT64, max_size=4)),
        data=st.binary(max_size=64),
        last=st.booleans(),
    )
    random = st.builds(
        lambda h, cs: Save(h, tuple(cs)),
        st.one_of(st.none(), headers()),
        st.lists(chunk, max_size=5),
    )
    return weighted((3, made), (1, random))


def unary_calls() -> st.SearchStrategy[Unary]:
    loaders = st.one_of(st.just((MODEL, DTYPE, FINGERPRINT)), st.tuples(TEXTS, TEXTS, TEXTS))
    sessions = st.one_of(st.just(OWNER), st.just("someone-else"), TEXTS)
    return st.one_of(
        st.builds(
            lambda s, i, loader: Unary(
                "Load",
                pb.LoadRequest(
                    session_id=s, snapshot_id=i, model=loader[0], dtype=loader[1], tokenizer_fingerprint=loader[2]
                ),
            ),
            sessions,
            st.one_of(ids(), st.just("<resident>")),
            loaders,
        ),
        st.builds(
            lambda s, i: Unary("Delete", pb.DeleteRequest(session_id=s, snapshot_id=i)),
            sessions,
            st.one_of(ids(), st.just("<resident>")),
        ),
        st.builds(lambda s: Unary("List", pb.ListRequest(session_id=s)), st.one_of(sessions, st.sampled_from(PATHS))),
    )


def raw_calls() -> st.SearchStrategy[Raw]:
    load = pb.LoadRequest(session_id=OWNER, snapshot_id="m1d1x1x1x1", model=MODEL).SerializeToString()
    save = pb.SaveRequest(header=good_header(1)).SerializeToString()
    return st.one_of(
        st.builds(lambda m, p: Raw(m, (p,)), st.sampled_from(["Load", "List", "Delete"]), corrupt(load)),
        st.builds(lambda ps: Raw("Save", tuple(ps)), st.lists(corrupt(save), min_size=1, max_size=3)),
    )


def calls() -> st.SearchStrategy[Save | Unary | Raw]:
    return weighted((2, saves()), (1, unary_calls()), (1, raw_calls()))


class SnapshotFuzzer:
    name = "snapshot-grpc"

    def __init__(self, target: Target, tally: Tally | None = None) -> None:
        self.target = target
        self.tally = tally or Tally(self.name)
        self.channel = open_channel(target.snapshot_addr)
        self.stub = snapshot_pb2_grpc.SnapshotStub(self.channel)
        self.resident = self._save_resident()

    def close(self) -> None:
        self.channel.close()

    def _save_resident(self) -> str:
        """A snapshot of OWNER that loads, lists and deletes may find (saved again whenever a Delete took it)."""
        arrays = cache(1, 1, 2, 2, None, 0)
        requests = [pb.SaveRequest(header=good_header(1))]
        requests += [pb.SaveRequest(chunk=c) for name, a in arrays.items() for c in tensor_chunks(name, a)]
        info = self.stub.Save(iter(requests), timeout=CALL_TIMEOUT_S)
        return str(info.snapshot_id)

    def _outside(self) -> dict[str, str]:
        """Everything in the service's directory that is not the store (logs excepted: they grow)."""
        root = self.target.workdir
        return {p.name: "dir" if p.is_dir() else str(p.stat().st_size) for p in root.iterdir() if p.name != "logs"}

    def run(self, call: Save | Unary | Raw) -> Verdict:
        try:
            verdict = self._run(call)
        except Crash as crash:
            self.tally.add(Verdict.CRASH, str(crash))
            raise
        self.tally.add(verdict)
        return verdict

    def _run(self, call: Save | Unary | Raw) -> Verdict:
        store, outside = tree(self.target.snapshot_dir), self._outside()
        if isinstance(call, Save):
            verdict, info = self._save(call)
        elif isinstance(call, Unary):
            verdict, info = self._unary(call), None
        else:
            verdict, info = self._raw(call), None
        check_health(self.channel, repr(call))
        if self.target.dead():
            raise Crash(f"after {call!r}, services died: {self.target.dead()}")
        if self._outside() != outside:
            raise Crash(f"{call!r} changed the service's directory outside the store: {self._outside()}")
        if verdict is Verdict.REFUSED and tree(self.target.snapshot_dir) != store:
            raise Crash(f"{call!r} was refused and changed the store")
        if info is not None:
            self._check_saved(call, info)  # type: ignore[arg-type]
        if isinstance(call, Unary) and call.method == "Delete" and verdict is Verdict.ACCEPTED:
            if call.request.snapshot_id not in ("<resident>", self.resident):
                raise Crash(f"{call!r} deleted something that was never saved")
            self.resident = self._save_resident()
        return verdict

    def _save(self, call: Save) -> tuple[Verdict, pb.SnapshotInfo | None]:
        requests = [] if call.header is None else [pb.SaveRequest(header=call.header)]
        if call.extra_header and call.header is not None:
            requests.append(pb.SaveRequest(header=call.header))
        requests += [pb.SaveRequest(chunk=c) for c in call.chunks]
        try:
            info = self.stub.Save(iter(requests), timeout=CALL_TIMEOUT_S)
        except grpc.RpcError as error:
            return judge(error, repr(call)), None
        return Verdict.ACCEPTED, info

    def _check_saved(self, call: Save, info: pb.SnapshotInfo) -> None:
        """An accepted save is complete: it loads back as it was sent (then it is deleted, to keep the store small)."""
        head = call.header
        assert head is not None
        request = pb.LoadRequest(
            session_id=head.session_id,
            snapshot_id=info.snapshot_id,
            model=head.model,
            dtype=head.dtype,
            tokenizer_fingerprint=head.tokenizer_fingerprint,
        )
        try:
            got: dict[str, bytes] = {}
            for response in self.stub.Load(request, timeout=CALL_TIMEOUT_S):
                if response.HasField("chunk"):
                    got[response.chunk.name] = got.get(response.chunk.name, b"") + response.chunk.data
        except grpc.RpcError as error:
            raise Crash(
                f"{call!r} was accepted as {info.snapshot_id} but does not load: {error.code().name} {error.details()}"  # type: ignore[attr-defined]
            ) from None
        finally:
            self.stub.Delete(pb.DeleteRequest(session_id=head.session_id, snapshot_id=info.snapshot_id))
        sent = dict(call.arrays)
        if sent and got != sent:
            raise Crash(f"{call!r} loads back different tensors: {sorted(got)} vs {sorted(sent)}")

    def _unary(self, call: Unary) -> Verdict:
        request = type(call.request)()
        request.CopyFrom(call.request)
        if getattr(request, "snapshot_id", None) == "<resident>":
            request.snapshot_id = self.resident
        try:
            result = getattr(self.stub, call.method)(request, timeout=CALL_TIMEOUT_S)
            if call.method == "Load":
                list(result)
        except grpc.RpcError as error:
            return judge(error, repr(call))
        return Verdict.ACCEPTED

    def _raw(self, call: Raw) -> Verdict:
        try:
            if call.method == "Save":
                raw_stream(self.channel, SERVICE + "Save", list(call.payloads), response_streaming=False)
            elif call.method == "Load":
                list(self.channel.unary_stream(SERVICE + "Load")(call.payloads[0], timeout=CALL_TIMEOUT_S))
            else:
                raw_unary(self.channel, SERVICE + call.method, call.payloads[0])
        except grpc.RpcError as error:
            return judge(error, f"raw bytes {call.payloads!r} to {call.method}")
        return Verdict.ACCEPTED


def _short(message: Any) -> str:
    text = str(message).replace("\n", " ")
    return text if len(text) <= 240 else f"{text[:240]}...({len(text)} chars)"
