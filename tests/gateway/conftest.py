"""Gateway fixtures: a real tracker process and a real gateway process on free ports, sharing the test Redis.

The snapshot and inference addresses point at ports nobody listens on: these tests cover what the gateway does by
itself and with the tracker; replies from the model are covered by the whole-stack tests.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect

from devstack.procs import Proc
from devstack.stack import Stack

# A database of its own: other test modules flush db 0 between their tests.
GATEWAY_DB = 5
RECV_TIMEOUT_S = 15.0


@dataclass
class Gateway:
    url: str
    ws_url: str
    redis_url: str
    proc: Proc


@pytest.fixture(scope="session")
def gateway_redis_url(redis_server: tuple[Proc, str]) -> str:
    return redis_server[1].rsplit("/", 1)[0] + f"/{GATEWAY_DB}"


@pytest.fixture(scope="session")
def tracker_addr(gateway_redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One tracker for every gateway module (as tests/inference has): what it keeps of a session is in Redis, its
    in-memory copy is of sessions only their own test knows, and its start (~3 s) is paid once, not per module."""
    stack = Stack(tmp_path_factory.mktemp("tracker"), services=("tracker",), redis_url_override=gateway_redis_url)
    with stack:
        yield stack.tracker_addr


def start_gateway(redis_url: str, tracker: str, workdir: Path, **limits: str) -> Gateway:
    """A gateway of its own (tests vary its limits) on the shared tracker; snapshot and inference are not running."""
    env = {
        "HALOWEAVE_TRACKER_ADDR": tracker,
        "HALOWEAVE_GATEWAY_JOB_TIMEOUT_S": "2",
        **{f"HALOWEAVE_GATEWAY_{name.upper()}": value for name, value in limits.items()},
    }
    stack = Stack(workdir, services=("gateway",), redis_url_override=redis_url, env=env).start()
    return Gateway(stack.gateway_url, stack.ws_url, redis_url, stack.procs["gateway"])


@pytest.fixture(scope="module")
def gateway(gateway_redis_url: str, tracker_addr: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    gw = start_gateway(
        gateway_redis_url, tracker_addr, tmp_path_factory.mktemp("gateway"), send_buffer="64", slow_client_s="1"
    )
    try:
        yield gw
    finally:
        gw.proc.stop()


class Client:
    """A test WebSocket client: JSON frames, every receive bounded by a timeout so a bug fails instead of hanging."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws

    async def send(self, frame: dict[str, Any] | str) -> None:
        await self.ws.send(frame if isinstance(frame, str) else json.dumps(frame))

    async def recv(self) -> dict[str, Any]:
        raw = await asyncio.wait_for(self.ws.recv(), RECV_TIMEOUT_S)
        frame: dict[str, Any] = json.loads(raw)
        return frame

    async def until(self, kind: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """Receives until a frame of `kind`; returns it and every frame before it."""
        seen: list[dict[str, Any]] = []
        while True:
            frame = await self.recv()
            if frame["type"] == kind:
                return frame, seen
            seen.append(frame)

    async def until_event(self, event_id: int) -> list[dict[str, Any]]:
        """Receives every frame up to and including the one with `event_id`."""
        frames: list[dict[str, Any]] = []
        while not frames or frames[-1]["event_id"] < event_id:
            frames.append(await self.recv())
        return frames

    async def hello(self, **fields: Any) -> dict[str, Any]:
        await self.send({"type": "hello", **fields})
        frame = await self.recv()
        assert frame["type"] == "session", frame
        return frame


def open_client(ws_url: str, **options: Any) -> Any:
    return connect(ws_url, open_timeout=10, **options)
