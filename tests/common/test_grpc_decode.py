"""Every gRPC server refuses bytes that decode to no message with INVALID_ARGUMENT (grpc itself answered UNKNOWN for a
unary call, and a stream's servicer met the DecodeError as an unhandled exception: INTERNAL, with a traceback)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from devstack.procs import free_port
from services.common.grpc_server import Server, channel

CHECK = "/grpc.health.v1.Health/Check"
WATCH = "/grpc.health.v1.Health/Watch"


@pytest.fixture
async def server() -> AsyncIterator[str]:
    address = f"127.0.0.1:{free_port()}"
    running = Server(address)
    await running.start()
    try:
        yield address
    finally:
        await running.stop(grace=0)


@pytest.mark.parametrize("payload", [b"\xff", b"\x0a\x02\xff\xfe", b"\x0a\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff"])
async def test_undecodable_requests_are_invalid_argument(server: str, payload: bytes) -> None:
    async with channel(server) as ch:
        for call in (ch.unary_unary(CHECK)(payload, timeout=10), _first(ch.unary_stream(WATCH)(payload, timeout=10))):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await call
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "HealthCheckRequest" in (refused.value.details() or "")
        # Well-formed requests still pass through the interceptor untouched.
        reply = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        watch = health_pb2_grpc.HealthStub(ch).Watch(health_pb2.HealthCheckRequest(), timeout=10)
        assert (await watch.read()).status == health_pb2.HealthCheckResponse.SERVING
        watch.cancel()


async def _first(call: grpc.aio.UnaryStreamCall) -> object:
    return await call.read()
