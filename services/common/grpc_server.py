"""gRPC server plumbing shared by the services: health, error mapping, graceful stop.

Every server serves `grpc.health.v1` (SERVING once started, NOT_SERVING while stopping) so that the launcher, the tests
and Kubernetes probes all wait on the same signal.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from services.common import errors
from services.common.errors import HaloWeaveError
from services.common.grpc_decode import DecodeRequests

log = logging.getLogger(__name__)

# No per-message ceiling below what chunked streams need; 64 MiB bounds a single malformed message.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
SERVER_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
]
CHANNEL_OPTIONS = SERVER_OPTIONS

_STATUS = {
    "invalid_argument": grpc.StatusCode.INVALID_ARGUMENT,
    "not_found": grpc.StatusCode.NOT_FOUND,
    "permission_denied": grpc.StatusCode.PERMISSION_DENIED,
    "failed_precondition": grpc.StatusCode.FAILED_PRECONDITION,
    "data_loss": grpc.StatusCode.DATA_LOSS,
    "already_exists": grpc.StatusCode.ALREADY_EXISTS,
    "unavailable": grpc.StatusCode.UNAVAILABLE,
    "internal": grpc.StatusCode.INTERNAL,
    "aborted": grpc.StatusCode.ABORTED,
    "overloaded": grpc.StatusCode.RESOURCE_EXHAUSTED,
    "busy": grpc.StatusCode.FAILED_PRECONDITION,
}

# The client side of the same mapping: a peer's status becomes the domain error it stands for.
_ERRORS: dict[grpc.StatusCode, type[HaloWeaveError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: errors.InvalidArgument,
    grpc.StatusCode.NOT_FOUND: errors.NotFound,
    grpc.StatusCode.PERMISSION_DENIED: errors.PermissionDenied,
    grpc.StatusCode.FAILED_PRECONDITION: errors.FailedPrecondition,
    grpc.StatusCode.DATA_LOSS: errors.DataLoss,
    grpc.StatusCode.ALREADY_EXISTS: errors.AlreadyExists,
    grpc.StatusCode.UNAVAILABLE: errors.Unavailable,
    grpc.StatusCode.ABORTED: errors.Aborted,
    grpc.StatusCode.DEADLINE_EXCEEDED: errors.Unavailable,
}

F = TypeVar("F", bound=Callable[..., Any])

# Redis away (restarting, loading its AOF, stalled past the client's socket time-out): the call may be retried once it
# is back, so the caller hears UNAVAILABLE, never INTERNAL.
REDIS_UNAVAILABLE = (RedisConnectionError, RedisTimeoutError)


def domain_error(error: grpc.aio.AioRpcError, peer: str) -> HaloWeaveError:
    """A failed call to `peer` as a domain error, so callers never need to know grpc."""
    cls = _ERRORS.get(error.code(), HaloWeaveError)
    return cls(f"{peer}: {error.details() or error.code().name}")


def status_for(error: HaloWeaveError) -> grpc.StatusCode:
    return _STATUS.get(error.code, grpc.StatusCode.INTERNAL)


def handle_errors(method: F) -> F:
    """Wraps an async unary or stream-unary servicer method: domain errors become statuses, bugs become INTERNAL."""

    @functools.wraps(method)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await method(self, request, context)
        except HaloWeaveError as error:
            await context.abort(status_for(error), error.message)
        except grpc.aio.AbortError:
            raise
        except REDIS_UNAVAILABLE as error:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"redis unavailable: {type(error).__name__}")
        except Exception:
            log.exception("unhandled error in %s", method.__qualname__)
            await context.abort(grpc.StatusCode.INTERNAL, f"internal error in {method.__name__}")

    return wrapper  # type: ignore[return-value]


def handle_stream_errors(method: F) -> F:
    """The same for async-generator (server-streaming and bidirectional) methods."""

    @functools.wraps(method)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        try:
            async for item in method(self, request, context):
                yield item
        except HaloWeaveError as error:
            await context.abort(status_for(error), error.message)
        except grpc.aio.AbortError:
            raise
        except REDIS_UNAVAILABLE as error:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"redis unavailable: {type(error).__name__}")
        except Exception:
            log.exception("unhandled error in %s", method.__qualname__)
            await context.abort(grpc.StatusCode.INTERNAL, f"internal error in {method.__name__}")

    return wrapper  # type: ignore[return-value]


class Server:
    """A grpc.aio server with the health service; `add` registers a servicer with its generated add function."""

    def __init__(self, address: str) -> None:
        self.address = address
        # Requests that do not decode are refused as INVALID_ARGUMENT, not reported as the server's own failure.
        self.server = grpc.aio.server(options=SERVER_OPTIONS, interceptors=[DecodeRequests()])
        self.health = health.aio.HealthServicer() if hasattr(health, "aio") else health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        self.port = self.server.add_insecure_port(address)
        if self.port == 0:
            raise OSError(f"cannot bind gRPC server to {address}")
        self._names: list[str] = []

    def add(self, add_fn: Callable[[Any, grpc.aio.Server], None], servicer: Any, service_name: str) -> None:
        add_fn(servicer, self.server)
        self._names.append(service_name)

    async def _set_all(self, status: Any) -> None:
        for name in ["", *self._names]:
            result = self.health.set(name, status)
            if isinstance(result, Awaitable):
                await result

    async def start(self) -> None:
        await self.server.start()
        await self._set_all(health_pb2.HealthCheckResponse.SERVING)
        log.info("gRPC serving %s on %s", ", ".join(self._names), self.address)

    async def stop(self, grace: float = 5.0) -> None:
        await self._set_all(health_pb2.HealthCheckResponse.NOT_SERVING)
        await self.server.stop(grace)

    async def wait(self) -> None:
        await self.server.wait_for_termination()


def channel(address: str) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS)


async def check_health(address: str, service: str = "", timeout: float = 1.0) -> bool:
    """True when the server at `address` reports SERVING."""
    async with channel(address) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        try:
            reply = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        except grpc.aio.AioRpcError:
            return False
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)
