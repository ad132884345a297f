"""What the gRPC fuzzers share: how a status is judged, undecodable bytes, and strategies for protobuf fields."""

from __future__ import annotations

from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import strategies as st

from bench.fuzz.tally import Crash, Verdict
from services.common.grpc_server import CHANNEL_OPTIONS

CALL_TIMEOUT_S = 15.0
# A refusal: the caller sent something wrong or untimely. Anything else (UNKNOWN, INTERNAL: an unhandled exception;
# UNAVAILABLE, DEADLINE_EXCEEDED: the server is down or stuck) is a crash.
REFUSALS = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.ALREADY_EXISTS,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.DATA_LOSS,
    }
)

INT32 = st.one_of(st.integers(-3, 64), st.integers(-(2**31), 2**31 - 1), st.sampled_from([-(2**31), 2**31 - 1]))
UINT32 = st.one_of(st.integers(0, 64), st.integers(0, 2**32 - 1), st.just(2**32 - 1))
INT64 = st.one_of(st.integers(-3, 10_000), st.integers(-(2**63), 2**63 - 1), st.sampled_from([-(2**63), 2**63 - 1]))
DOUBLES = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, -0.0, 1.0, 1e308, -1e308, 5e-324, float("nan"), float("inf"), -float("inf")]),
)
FLOAT32 = st.one_of(
    st.floats(width=32, allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, 1.0, -1e-30, 3.4e38, float("nan"), float("inf")]),
)
# Protobuf strings are UTF-8 (the Python runtime refuses surrogates before anything is sent).
TEXTS = st.one_of(
    st.text(max_size=16),
    st.text(st.characters(codec="utf-8"), max_size=40),
    st.builds(lambda c, n: c * n, st.sampled_from("a/.\x00é😀}{"), st.sampled_from([300, 10_000, 200_000])),
)


def judge(error: grpc.RpcError, what: str) -> Verdict:
    """A failed call: a refusal when its status says what was wrong; else a Crash."""
    code, details = error.code(), error.details() or ""  # type: ignore[attr-defined]
    if code in REFUSALS and details.strip():
        return Verdict.REFUSED
    raise Crash(f"{what}: {code.name} {details[:300]!r}")


def check_health(channel: grpc.Channel, what: str) -> None:
    """The server still answers (its health service says SERVING)."""
    try:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=CALL_TIMEOUT_S)
    except grpc.RpcError as error:
        raise Crash(f"after {what}, the health check failed: {error.code().name}") from None  # type: ignore[attr-defined]
    if reply.status != health_pb2.HealthCheckResponse.SERVING:
        raise Crash(f"after {what}, the server is not serving")


def open_channel(address: str) -> grpc.Channel:
    return grpc.insecure_channel(address, options=CHANNEL_OPTIONS)


def corrupt(valid: bytes) -> st.SearchStrategy[bytes]:
    """Bytes that are not (or only nearly) the serialisation of a message: noise, truncations, flipped bytes."""
    flips = st.lists(st.tuples(st.integers(0, max(len(valid) - 1, 0)), st.integers(0, 255)), min_size=1, max_size=4)

    def flipped(changes: list[tuple[int, int]]) -> bytes:
        data = bytearray(valid or b"\x00")
        for index, value in changes:
            data[min(index, len(data) - 1)] = value
        return bytes(data)

    return st.one_of(
        st.binary(max_size=64),
        st.builds(lambda n: valid[:n], st.integers(0, max(len(valid) - 1, 0))),
        st.builds(flipped, flips),
        st.sampled_from([b"\xff", b"\x0a\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff", b"\x0a\x02\xff\xfe", b"\x08"]),
    )


def raw_unary(channel: grpc.Channel, method: str, payload: bytes) -> Any:
    """Sends bytes as they are (no serialiser) to a unary method."""
    return channel.unary_unary(method)(payload, timeout=CALL_TIMEOUT_S)


def raw_stream(channel: grpc.Channel, method: str, payloads: list[bytes], response_streaming: bool) -> Any:
    """Sends bytes as they are to a client-streaming method; reads every answer."""
    if response_streaming:
        return list(channel.stream_stream(method)(iter(payloads), timeout=CALL_TIMEOUT_S))
    return channel.stream_unary(method)(iter(payloads), timeout=CALL_TIMEOUT_S)
