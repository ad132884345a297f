"""Backpressure, idle timeout and frame caps, against a real gateway + tracker + Redis."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import httpx
import psutil
import pytest
from redis.asyncio import Redis
from websockets.exceptions import ConnectionClosed

from services.common import events, keys
from tests.gateway.conftest import Client, Gateway, open_client, start_gateway
from tests.support.raw_client import RawClient, small_receive_socket

BIG = "x" * 16_000  # a fat event payload, so a stalled socket fills quickly
FLOOD = 600  # ~10 MB: well past the kernel's send buffer plus the gateway's outbox of 64 frames


async def error_count(gateway: Gateway, code: str) -> float:
    async with httpx.AsyncClient() as api:
        text = (await api.get(f"{gateway.url}/metrics")).text
    for line in text.splitlines():
        if line.startswith(f'haloweave_gateway_errors_total{{code="{code}"}}'):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def test_slow_consumer_is_closed_while_another_client_receives_everything(gateway: Gateway) -> None:
    redis = Redis.from_url(gateway.redis_url)
    async with open_client(gateway.ws_url) as ws:
        session = await Client(ws).hello()
    sid, token, start = session["session_id"], session["token"], session["last_event_id"]
    slow_ws = await open_client(
        gateway.ws_url, sock=small_receive_socket(gateway.ws_url), max_queue=2, max_size=None
    ).__aenter__()
    try:
        slow, before = Client(slow_ws), await error_count(gateway, "slow_consumer")
        await slow.hello(session_id=sid, token=token, last_event_id=start)  # ...and then it stops reading
        async with open_client(gateway.ws_url, max_size=None) as fast_ws:
            fast = Client(fast_ws)
            await fast.hello(session_id=sid, token=token, last_event_id=start)
            for i in range(0, FLOOD, 50):
                batch = [("attention", {"step": j, "data": BIG}) for j in range(i, i + 50)]
                last = await events.append_events(redis, sid, batch)
            got = await fast.until_event(last)
            # The reader of a healthy client waits for room in its outbox: nothing lost, nothing twice, in order.
            assert [f["event_id"] for f in got] == list(range(start + 1, last + 1))
            assert [f["step"] for f in got] == list(range(FLOOD))

            deadline = asyncio.get_running_loop().time() + 30
            while await error_count(gateway, "slow_consumer") <= before:
                assert asyncio.get_running_loop().time() < deadline, "the stalled client was never closed"
                await asyncio.sleep(0.05)

            # The stalled client reads what reached it, then a clear error, then the close; what it saw is a gap-free
            # prefix, so a resume with its last id loses nothing.
            seen: list[dict[str, Any]] = []
            with pytest.raises(ConnectionClosed) as closed:
                while True:
                    seen.append(json.loads(await asyncio.wait_for(slow_ws.recv(), 15)))
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 4429
            assert seen[-1]["type"] == "error" and seen[-1]["code"] == "slow_consumer"
            assert seen[-1]["event_id"] == 0, "the farewell overtakes unsent events: it carries no Stream id"
            relayed = [f["event_id"] for f in seen[:-1]]
            assert relayed == list(range(start + 1, start + 1 + len(relayed)))
            assert len(relayed) < FLOOD

            # The other client was never disturbed, and never saw the slow one's error.
            fresh = await events.append_event(redis, sid, "brightness", {"step": 0, "positions": [1], "scores": [1.0]})
            frame = await fast.recv()
            assert frame["event_id"] == fresh and frame["type"] == "brightness"

        async with open_client(gateway.ws_url, max_size=None) as again:
            resumed = Client(again)
            await resumed.hello(session_id=sid, token=token, last_event_id=relayed[-1])
            rest = await resumed.until_event(fresh)
            assert next(f["event_id"] for f in rest if f["type"] != "error") == relayed[-1] + 1
            assert "slow_consumer" not in {f.get("code") for f in rest}  # addressed to the closed connection
    finally:
        await slow_ws.close()
        await redis.aclose()


def gateway_connections_to(gateway: Gateway, client_port: int) -> list[str]:
    """The states of the gateway's TCP connections to one client port (the gateway is one process)."""
    connections = psutil.Process(gateway.proc.pid).net_connections(kind="tcp")
    return [c.status for c in connections if c.raddr and c.raddr.port == client_port]


async def stall(gateway: Gateway, redis: Redis) -> tuple[RawClient, str]:
    """A client that follows a session and then reads nothing while the session's events flood in, until the gateway
    gives up on it (the `slow_consumer` error addressed to it is in the Stream)."""
    async with open_client(gateway.ws_url) as ws:
        session = await Client(ws).hello()
    sid = session["session_id"]
    stalled = RawClient(gateway.ws_url)
    stalled.send({"type": "hello", "session_id": sid, "token": session["token"]})
    for i in range(0, FLOOD, 50):
        await events.append_events(redis, sid, [("attention", {"step": j, "data": BIG}) for j in range(i, i + 50)])
    deadline = asyncio.get_running_loop().time() + 30
    while True:
        latest = await redis.xrevrange(keys.events_stream(sid), count=1)
        if latest and b"slow_consumer" in latest[0][1][b"data"]:
            return stalled, sid
        assert asyncio.get_running_loop().time() < deadline, "the stalled client was never closed"
        await asyncio.sleep(0.1)


async def test_a_client_that_never_reads_is_dropped_not_held(gateway: Gateway) -> None:
    redis = Redis.from_url(gateway.redis_url)
    try:
        stalled, _ = await stall(gateway, redis)
        # It never reads again, nor closes: the close cannot reach it, yet the socket and what is buffered for it are
        # released within the farewell and close timeouts.
        deadline = asyncio.get_running_loop().time() + 30
        while "ESTABLISHED" in gateway_connections_to(gateway, stalled.port):
            assert asyncio.get_running_loop().time() < deadline, "the gateway still holds the stalled socket"
            await asyncio.sleep(0.2)
        stalled.sock.close()
    finally:
        await redis.aclose()


async def test_a_client_that_reads_again_after_it_was_given_up_meets_the_close_code(gateway: Gateway) -> None:
    redis = Redis.from_url(gateway.redis_url)
    try:
        stalled, _ = await stall(gateway, redis)
        # It reads again after the 2 + 2 s the gateway gives its farewell, and before the 10 s after which it drops
        # the socket. While its buffers are full the error frame cannot get through; the close frame is queued
        # behind what the client missed, so it meets it.
        await asyncio.sleep(6)
        stalled.read_to_the_end()
        assert stalled.close is not None, "the connection ended without a close frame"
        assert (stalled.close.code, stalled.close.reason) == (4429, "slow_consumer")
        relayed = [f["event_id"] for f in stalled.frames if f["type"] not in ("session", "error")]
        assert relayed == list(range(relayed[0], relayed[0] + len(relayed))), "a gap-free run, to resume after"
        stalled.sock.close()
    finally:
        await redis.aclose()


async def test_a_resume_older_than_the_kept_events_is_told_so(gateway: Gateway) -> None:
    redis = Redis.from_url(gateway.redis_url)
    try:
        async with open_client(gateway.ws_url) as ws:
            session = await Client(ws).hello()
        sid, token, start = session["session_id"], session["token"], session["last_event_id"]
        # Brightness-sized events under a small byte budget: the Stream keeps only the newest few.
        budget = events.StreamLimits(max_bytes=64 * 1024)
        payload = {"step": 0, "turn_id": 1, "positions": list(range(512)), "scores": [0.123456789] * 512}
        for step in range(40):
            last = await events.append_event(redis, sid, "brightness", {**payload, "step": step}, budget)
        oldest = events.entry_event_id((await redis.xrange(keys.events_stream(sid), count=1))[0][0])
        assert start + 1 < oldest < last

        async with open_client(gateway.ws_url, max_size=None) as ws:
            client = Client(ws)
            resumed = await client.hello(session_id=sid, token=token, last_event_id=start)
            assert resumed["replay_truncated"] is True and resumed["last_event_id"] == last
            frames = await client.until_event(last)
            assert [f["event_id"] for f in frames] == list(range(oldest, last + 1)), "from the oldest kept, once"
            assert frames[0]["type"] == "brightness"

        async with open_client(gateway.ws_url, max_size=None) as ws:  # a resume within what is kept is whole
            client = Client(ws)
            resumed = await client.hello(session_id=sid, token=token, last_event_id=oldest - 1)
            assert resumed["replay_truncated"] is False
            assert [f["event_id"] for f in await client.until_event(last)] == list(range(oldest, last + 1))
    finally:
        await redis.aclose()


async def test_more_sessions_than_a_redis_pool_are_followed_and_served(gateway: Gateway) -> None:
    # Every connection with a session blocks in XREAD on a Redis connection of its own: 150 of them once took every
    # connection of redis-py's default pool (100), and then every hello, message and REST call failed.
    followers = [await open_client(gateway.ws_url).__aenter__() for _ in range(150)]
    try:
        sessions = [await Client(ws).hello() for ws in followers]
        async with open_client(gateway.ws_url) as ws:
            late = await Client(ws).hello(session_id=sessions[0]["session_id"], token=sessions[0]["token"])
            assert late["resumed"] is True
        async with httpx.AsyncClient() as api:
            headers = {"Authorization": f"Bearer {sessions[-1]['token']}"}
            url = f"{gateway.url}/v1/sessions/{sessions[-1]['session_id']}/settings"
            assert (await api.get(url, headers=headers, timeout=10)).status_code == 200
    finally:
        for ws in followers:
            ws.transport.abort()  # a close would wait on the replay frames this test never reads


@pytest.fixture(scope="module")
def small_gateway(
    gateway_redis_url: str, tracker_addr: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    gw = start_gateway(gateway_redis_url, tracker_addr, tmp_path_factory.mktemp("small"), max_sessions="3")
    try:
        yield gw
    finally:
        gw.proc.stop()


async def test_a_hello_beyond_the_session_cap_is_refused_until_one_goes(small_gateway: Gateway) -> None:
    held = [await open_client(small_gateway.ws_url).__aenter__() for _ in range(3)]
    try:
        sessions = [await Client(ws).hello() for ws in held]
        first = sessions[0]
        async with open_client(small_gateway.ws_url) as ws:
            client = Client(ws)
            await client.send({"type": "hello"})
            refused = await client.recv()
            assert (refused["type"], refused["code"], refused["event_id"]) == ("error", "overloaded", 0)
            held.pop().transport.abort()
            deadline = asyncio.get_running_loop().time() + 10
            while True:  # the gateway notices the close at once; the retry of a client that was told to wait
                await client.send({"type": "hello", "session_id": first["session_id"], "token": first["token"]})
                frame = await client.recv()
                if frame["type"] == "session":
                    break
                assert frame["code"] == "overloaded" and asyncio.get_running_loop().time() < deadline
                await asyncio.sleep(0.1)
    finally:
        for ws in held:
            ws.transport.abort()


@pytest.fixture(scope="module")
def idle_gateway(
    gateway_redis_url: str, tracker_addr: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    gw = start_gateway(gateway_redis_url, tracker_addr, tmp_path_factory.mktemp("idle"), idle_timeout_s="1")
    try:
        yield gw
    finally:
        gw.proc.stop()


async def test_idle_connections_are_closed_with_a_clear_error(idle_gateway: Gateway) -> None:
    async with open_client(idle_gateway.ws_url) as ws:  # never says hello
        frame = json.loads(await asyncio.wait_for(ws.recv(), 15))
        assert (frame["type"], frame["code"], frame["event_id"]) == ("error", "idle_timeout", 0)
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), 15)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4408

    async with open_client(idle_gateway.ws_url) as ws:  # with a session, then silence
        client = Client(ws)
        assert (await client.hello())["type"] == "session"
        frames = await client.until("error")
        error = frames[0]
        # The error that ends a connection carries no Stream id (docs/websocket.md, "Event ids").
        assert error["code"] == "idle_timeout" and error["event_id"] == 0


async def test_frames_over_the_hard_cap_close_the_socket(gateway: Gateway) -> None:
    async with open_client(gateway.ws_url, max_size=None) as ws:
        await ws.send(json.dumps({"type": "user_message", "text": "y" * (1024 * 1024 + 10)}))
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), 15)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009
