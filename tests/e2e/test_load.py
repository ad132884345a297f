"""The whole system under connection load: idle sockets, chatting sessions, clients that stop reading, clients that drop
and resume. Real gateway, tracker, Redis and inference worker (the small CPU model, short replies).

Two identical rounds run one after the other, and the gateway's and the tracker's resident memory is sampled at the
start, throughout and after each round: a round may cost memory while it runs (connections, buffers), but what it
leaves behind must not grow from one round to the next, and what a client that never reads can pin is bounded by
the send buffer, not by what is appended for it.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import psutil
import pytest
from redis.asyncio import Redis
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from devstack.stack import Stack
from services.common import events, keys
from tests.support.raw_client import RawClient

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

IDLE = 200  # open tabs: a session each, nothing said
CHATTERS = 16  # as many as one worker batches (HALOWEAVE_MAX_RUNNING)
DROPPERS = 4  # of the chatters: drop their socket mid-reply, then resume with last_event_id
SLOW = 6  # clients that stop reading; half read again after the gateway gave up on them, half never
FLOOD_BYTES = 24 * 1024 * 1024  # appended to the never-readers' sessions: 6x their send buffer
SLOW_CLIENT_S = 2.0
LATE_S = 6.0  # how long after the gateway gave up on them the late readers read again
SHORT = {"max_new_tokens": 8, "temperature": 0.0}
MB = 1024 * 1024
RECV_S = 120.0  # a reply while 16 share two cores; normally far less

# A brightness event at a full batch of positions, as the tracker writes it: ~12.5 KB.
BRIGHTNESS = {"step": 0, "turn_id": 1, "positions": list(range(512)), "scores": [0.1234567891] * 512}


@pytest.fixture(scope="module")
def load_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    env = {"HALOWEAVE_GATEWAY_SLOW_CLIENT_S": str(SLOW_CLIENT_S)}
    with Stack(tmp_path_factory.mktemp("load"), env=env, redis_appendonly=False) as stack:
        yield stack
        assert not stack.dead(), f"services died under load: {stack.dead()}"


# ---- memory ---------------------------------------------------------------------------------------------------------


class RssSampler:
    """Samples the resident memory of named processes every 100 ms in a thread, keeping the peak since `mark`."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.procs = {name: psutil.Process(pid) for name, pid in pids.items()}
        self.peak = dict.fromkeys(pids, 0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def now(self) -> dict[str, int]:
        return {name: proc.memory_info().rss for name, proc in self.procs.items()}

    def mark(self) -> None:
        self.peak = self.now()

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            for name, rss in self.now().items():
                self.peak[name] = max(self.peak[name], rss)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


async def settled(sampler: RssSampler) -> dict[str, int]:
    """The memory once it stops moving (freed buffers returned, sockets gone): the last of steady samples."""
    last = sampler.now()
    for _ in range(20):
        await asyncio.sleep(0.5)
        now = sampler.now()
        if all(abs(now[name] - last[name]) < MB for name in now):
            return now
        last = now
    return last


# ---- clients --------------------------------------------------------------------------------------------------------


async def open_ws(stack: Stack, **options: Any) -> ClientConnection:
    return await connect(stack.ws_url, open_timeout=30, max_size=None, **options)


async def recv(ws: ClientConnection, timeout: float = RECV_S) -> dict[str, Any]:
    frame: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), timeout))
    return frame


async def hello(ws: ClientConnection, **fields: Any) -> dict[str, Any]:
    await ws.send(json.dumps({"type": "hello", **fields}))
    frame = await recv(ws)
    assert frame["type"] == "session", frame
    return frame


async def idle_client(stack: Stack) -> tuple[ClientConnection, asyncio.Task[None]]:
    """A healthy client that says hello and then nothing: it reads whatever comes (its own session's start)."""
    ws = await open_ws(stack)
    await hello(ws)

    async def drain() -> None:
        try:
            async for _ in ws:
                pass
        except ConnectionClosed:
            pass

    return ws, asyncio.create_task(drain())


@dataclass
class Chat:
    session_id: str = ""
    token: str = ""
    frames: list[dict[str, Any]] = field(default_factory=list)
    resumed_at: int | None = None  # the last_event_id it resumed with, for a client that dropped


async def chatter(stack: Stack, index: int, drop: bool) -> Chat:
    """A new session, short-reply settings, one message; a dropper loses its socket after the reply's first token
    and resumes on a new one with the largest event id it saw."""
    chat = Chat()
    ws = await open_ws(stack)
    session = await hello(ws)
    chat.session_id, chat.token = session["session_id"], session["token"]
    await ws.send(json.dumps({"type": "settings", "settings": SHORT}))

    async def until(done: Any) -> None:
        while True:
            frame = await recv(ws)
            chat.frames.append(frame)
            assert frame["type"] != "error", frame
            if done(frame):
                return

    await until(lambda f: f["type"] == "settings" and SHORT.items() <= f["settings"].items())
    await ws.send(json.dumps({"type": "user_message", "text": f"Name one colour, please ({index})."}))
    if drop:
        await until(lambda f: f["type"] == "token" and f["role"] == "assistant" and not f["token"].startswith("<|"))
        ws.transport.abort()  # no close handshake: the network went away
        await asyncio.sleep(0.3)  # the reply goes on meanwhile
        chat.resumed_at = max(f["event_id"] for f in chat.frames)
        ws = await open_ws(stack)
        again = await hello(ws, session_id=chat.session_id, token=chat.token, last_event_id=chat.resumed_at)
        assert again["resumed"] is True and again["replay_truncated"] is False
    await until(lambda f: f["type"] == "done")
    await ws.close()
    return chat


async def slow_client(stack: Stack) -> tuple[RawClient, str]:
    """A session of its own, followed from its start by a client that then reads nothing (a raw client: the websockets
    client would read in the background); returns it and the session id."""
    ws = await open_ws(stack)
    session = await hello(ws)
    await ws.close()
    slow = RawClient(stack.ws_url)
    slow.send({"type": "hello", "session_id": session["session_id"], "token": session["token"]})
    return slow, session["session_id"]


FLOOD_BATCH = 50


async def flood(redis: Redis, session_id: str, at_least: int) -> None:
    """Brightness-sized events, appended as the tracker would, while nobody reads them on the slow socket: `at_least`
    bytes, and on until the gateway has given up on the client (its `slow_consumer` error, addressed to it, is among
    the last batch's events)."""
    size = len(events.encode("brightness", BRIGHTNESS)[1])
    appended = 0
    given_up = False
    while appended < at_least or not given_up:
        assert appended < 8 * FLOOD_BYTES, "the gateway never gave up on a client that reads nothing"
        await events.append_events(redis, session_id, [("brightness", BRIGHTNESS)] * FLOOD_BATCH)
        appended += size * FLOOD_BATCH
        recent = await redis.xrevrange(keys.events_stream(session_id), count=FLOOD_BATCH + 5)
        given_up = given_up or any(b"slow_consumer" in fields[b"data"] for _, fields in recent)
        await asyncio.sleep(0.01 if given_up else 0)


async def late_reader(client: RawClient, flooded: asyncio.Task[None]) -> None:
    """Reads again a while after the gateway gave up on it (past the 2 + 2 s it gives its farewell, within the 10 s
    before it drops the socket): the frames it missed (a gap-free run from the start, which a resume continues, or
    a trim said in place), then the close code."""
    await flooded
    await asyncio.sleep(LATE_S)
    await asyncio.to_thread(client.read_to_the_end)
    assert client.close is not None, "the connection ended without a close frame"
    assert (client.close.code, client.close.reason) == (4429, "slow_consumer")
    expected = 1
    for frame in client.frames[1:]:  # after the session frame
        if frame["type"] == "error" and frame["code"] == "replay_truncated":
            # The flood outran this reader, and the Stream was trimmed past it: said in place, with the last id gone.
            assert frame["event_id"] >= expected
            expected = frame["event_id"] + 1
        elif frame["type"] == "error":
            assert frame["code"] == "slow_consumer"
        else:
            assert frame["event_id"] == expected, "a gap-free run (or a trim said in place), which a resume continues"
            expected += 1


def established_from(stack: Stack, ports: set[int]) -> set[int]:
    connections = psutil.Process(stack.procs["gateway"].pid).net_connections(kind="tcp")
    return {c.raddr.port for c in connections if c.raddr and c.raddr.port in ports and c.status == "ESTABLISHED"}


async def eventually(check: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.2)


# ---- one round ------------------------------------------------------------------------------------------------------


async def check_delivery(redis: Redis, chat: Chat) -> None:
    """Every event of the session reached the client once, in order, across the drop: nothing lost, nothing twice."""
    entries: Any = await redis.xrange(keys.events_stream(chat.session_id))
    stored = [events.entry_event_id(entry_id) for entry_id, _ in entries]
    assert stored[0] == 1, "nothing of a short session is trimmed"
    seen = [f["event_id"] for f in chat.frames]
    assert seen == stored, f"client saw {len(seen)} of {len(stored)} events, or some twice"
    kinds = [events.decode(entry_id, fields)["type"] for entry_id, fields in entries]
    assert [f["type"] for f in chat.frames] == kinds
    done = [f for f in chat.frames if f["type"] == "done"]
    assert len(done) == 1 and done[0]["stats"]["tokens"] >= 1


async def one_round(stack: Stack, redis: Redis) -> dict[str, float]:
    timings: dict[str, float] = {}
    started = time.monotonic()
    idle = [await idle_client(stack) for _ in range(IDLE)]  # one at a time: a page load each, not a stampede
    timings["idle_open_s"] = time.monotonic() - started

    slow = [await slow_client(stack) for _ in range(SLOW)]
    half = SLOW // 2
    flooding = [
        asyncio.create_task(flood(redis, sid, 0 if i < half else FLOOD_BYTES)) for i, (_, sid) in enumerate(slow)
    ]
    readers = [asyncio.create_task(late_reader(slow[i][0], flooding[i])) for i in range(half)]

    started = time.monotonic()
    chats = await asyncio.gather(*(chatter(stack, i, drop=i < DROPPERS) for i in range(CHATTERS)))
    timings["chat_s"] = time.monotonic() - started
    for chat in chats:
        await check_delivery(redis, chat)
    assert all(chat.resumed_at for chat in chats[:DROPPERS])

    # The gateway gave up on every client that stopped reading (each flood goes on until it has), while the others
    # went on: they all finished above. Half of them read again, and meet a clear close code after what they missed.
    await asyncio.gather(*flooding, *readers)
    # The others never read again, nor close: the gateway drops their sockets itself.
    never = slow[half:]
    started = time.monotonic()
    ports = {client.port for client, _ in never}

    async def released() -> bool:
        return not established_from(stack, ports)

    await eventually(released, 40, "the gateway still holds sockets of clients that never read")
    timings["stalled_sockets_released_s"] = time.monotonic() - started
    for client, _ in slow:
        client.sock.close()
    for ws, task in idle:
        await ws.close()
        await task
    return timings


def mb(value: int) -> str:
    return f"{value / MB:.0f} MB"


async def test_idle_chatting_stalled_and_resuming_clients_leave_memory_bounded(load_stack: Stack) -> None:
    stack = load_stack
    redis = Redis.from_url(stack.redis_url)
    pids = {"gateway": stack.procs["gateway"].pid, "tracker": stack.procs["tracker"].pid}
    try:
        with RssSampler(pids) as sampler:
            await chatter(stack, -1, drop=False)  # warm: the model's first forward, every code path once
            start = await settled(sampler)
            figures = {"start": start}
            for name in ("round 1", "round 2"):
                sampler.mark()
                timings = await one_round(stack, redis)
                figures[f"{name} peak"] = dict(sampler.peak)
                figures[f"{name} after"] = await settled(sampler)
                print(f"\n{name}: " + ", ".join(f"{key} {value:.1f}" for key, value in timings.items()))
        print()
        for label, values in figures.items():
            print(f"  {label:<14} " + "  ".join(f"{name} {mb(rss)}" for name, rss in values.items()))

        first, second = figures["round 1 after"], figures["round 2 after"]
        for name in pids:
            # A round's own cost while it runs: 216 connections with their readers, six stalled send buffers of
            # 4 MiB each (measured: about 50 MB). Send buffers bounded in frames alone (4096 brightness frames, some
            # 50 MB each), or not at all (24 MB and more appended for each), would go far past it.
            peak = max(figures["round 1 peak"][name], figures["round 2 peak"][name])
            assert peak - start[name] < 100 * MB, f"{name} grew to {mb(peak)} from {mb(start[name])}"
            # Nothing a round leaves behind accumulates: the second round ends where the first did.
            assert second[name] - first[name] < 16 * MB, (
                f"{name}: {mb(first[name])} after one round, then {mb(second[name])}"
            )
    finally:
        await redis.aclose()
