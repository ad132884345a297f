"""The FastAPI app: built by `create_app(config)`, nothing read from the environment here."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from fastapi import FastAPI, Request, WebSocket
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from starlette.exceptions import HTTPException as StarletteHTTPException

from services.common import grpc_server
from services.gateway import erasures, protocol
from services.gateway.config import GatewayConfig
from services.gateway.connection import Connection, Deps
from services.gateway.metrics import GatewayMetrics
from services.gateway.openai import errors as openai_errors
from services.gateway.openai.routes import router as openai_router
from services.gateway.peers import Peers
from services.gateway.rest import ApiError, api_error_response, router
from services.gateway.rest_models import Health, Ready
from services.gateway.settings_schema import router as settings_schema_router

STATIC = Path(__file__).parent / "static"
# Redis connections for everything but the Stream readers (which have their own, see the lifespan below).
REDIS_COMMAND_CONNECTIONS = 128


def reconnect() -> Retry:
    """After Redis restarts, every pooled connection is dead, and each would fail its next command (a user message
    appended but never answered): a command that meets a closed connection is sent again on a new one. Only
    connection errors are retried, never a time-out, after which the command may have run."""
    return Retry(ExponentialBackoff(cap=0.5, base=0.05), retries=2, supported_errors=(RedisConnectionError,))


def create_app(config: GatewayConfig) -> FastAPI:
    metrics = GatewayMetrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Short commands share a pool that a burst waits on rather than fails; every connection following a session's
        # Stream blocks in XREAD on a connection of its own, from a second pool as large as their number may be.
        pool = aioredis.BlockingConnectionPool.from_url(
            config.redis_url, max_connections=REDIS_COMMAND_CONNECTIONS, timeout=config.rpc_timeout_s, retry=reconnect()
        )
        redis = aioredis.Redis.from_pool(pool)
        readers = aioredis.Redis.from_url(config.redis_url, max_connections=config.max_sessions, retry=reconnect())
        peers = Peers(config.tracker_addr, config.snapshot_addr, config.inference_addr, config.rpc_timeout_s)
        deps = Deps(config=config, redis=redis, peers=peers, metrics=metrics, readers=readers)
        app.state.deps = deps
        # Erasures announced by any gateway close this one's connections of the erased session; a client of its own,
        # since the subscription holds its connection for good.
        announcements = aioredis.Redis.from_url(config.redis_url)
        watcher = asyncio.create_task(erasures.watch(announcements, deps.sockets))
        try:
            yield
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
            await announcements.aclose()
            await peers.close()
            await readers.aclose()
            await redis.aclose()

    app = FastAPI(
        title="Halo Weave gateway",
        version="1",
        description="WebSocket chat at /v1/chat (protocol haloweave.chat.v1, see docs/websocket.md) and session REST.",
        lifespan=lifespan,
    )
    app.include_router(router)
    app.include_router(openai_router)
    app.include_router(settings_schema_router)

    @app.exception_handler(ApiError)
    async def on_api_error(_request: Request, error: Exception) -> JSONResponse:
        assert isinstance(error, ApiError)
        metrics.errors.labels(error.code).inc()
        return api_error_response(error)

    # The OpenAI-compatible routes answer in OpenAI's error format (services/gateway/openai/errors.py), apart from
    # the `{code, message}` bodies of every other route.
    @app.exception_handler(openai_errors.OpenAIError)
    async def on_openai_error(_request: Request, error: Exception) -> JSONResponse:
        assert isinstance(error, openai_errors.OpenAIError)
        metrics.errors.labels(error.code or error.kind).inc()
        return openai_errors.response(error)

    @app.exception_handler(RedisError)
    async def on_redis_error(_request: Request, error: Exception) -> JSONResponse:
        metrics.errors.labels(protocol.UNAVAILABLE).inc()
        return api_error_response(ApiError(protocol.UNAVAILABLE, f"Redis: {error}"))

    # Every refusal has the `{code, message}` body, also those FastAPI and Starlette make themselves.
    @app.exception_handler(RequestValidationError)
    async def on_invalid_request(_request: Request, error: Exception) -> JSONResponse:
        assert isinstance(error, RequestValidationError)
        problems = "; ".join(f"{'.'.join(map(str, e.get('loc', ())))}: {e.get('msg', '')}" for e in error.errors())
        return api_error_response(ApiError(protocol.BAD_FRAME, f"malformed request: {problems}", 422))

    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(_request: Request, error: Exception) -> JSONResponse:
        assert isinstance(error, StarletteHTTPException)
        if openai_errors.is_openai_path(_request.url.path):
            reply = openai_errors.response(openai_errors.from_http(error.status_code, str(error.detail)))
            reply.headers.update(error.headers or {})
            return reply
        code = {404: "not_found", 405: "method_not_allowed"}.get(error.status_code, "bad_request")
        reply = api_error_response(ApiError(code, str(error.detail), error.status_code))
        reply.headers.update(error.headers or {})
        return reply

    @app.websocket("/v1/chat")
    async def chat(ws: WebSocket) -> None:
        await Connection(ws, ws.app.state.deps).serve()

    @app.get("/healthz", tags=["ops"], summary="The process is alive", response_model=Health)
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get(
        "/readyz",
        tags=["ops"],
        summary="Redis and every gRPC peer answer",
        response_model=None,
        responses={
            200: {"model": Ready, "description": "Every dependency answers"},
            503: {"model": Ready, "description": "Some dependency does not answer: `checks` says which"},
        },
    )
    async def readyz(request: Request) -> JSONResponse:
        deps: Deps = request.app.state.deps
        checks = await _check_peers(deps)
        ready = all(checks.values())
        return JSONResponse({"ready": ready, "checks": checks}, status_code=200 if ready else 503)

    @app.get("/metrics", tags=["ops"], summary="Prometheus metrics", response_class=PlainTextResponse)
    async def metrics_endpoint() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


async def _check_peers(deps: Deps) -> dict[str, bool]:
    async def redis_ok() -> bool:
        try:
            return bool(await deps.redis.ping())
        except RedisError:
            return False

    config = deps.config
    names = ["redis", "tracker", "snapshot", "inference"]
    results: tuple[Any, ...] = await asyncio.gather(
        redis_ok(),
        grpc_server.check_health(config.tracker_addr),
        grpc_server.check_health(config.snapshot_addr),
        grpc_server.check_health(config.inference_addr),
        return_exceptions=True,
    )
    return {name: result is True for name, result in zip(names, results, strict=True)}
