"""The chat WebSocket against a real gateway, a real tracker and a real Redis (docs/websocket.md)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from redis.asyncio import Redis

from services.common import events, keys
from tests.gateway.conftest import Client, Gateway, open_client


@pytest.fixture
async def redis(gateway: Gateway) -> AsyncIterator[Redis]:
    client = Redis.from_url(gateway.redis_url)
    try:
        yield client
    finally:
        await client.aclose()


async def eventually(read: Callable[[], Awaitable[Any]], expected: Any, timeout: float = 10.0) -> None:
    """Polls `read` until it returns `expected` (a condition wait, not a timing assertion)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while (value := await read()) != expected:
        assert asyncio.get_running_loop().time() < deadline, f"still {value!r}, expected {expected!r}"
        await asyncio.sleep(0.02)


async def read_message(client: Client) -> list[dict[str, Any]]:
    """The token frames of one templated message: up to `<|im_end|>` and the newline after it."""
    tokens: list[dict[str, Any]] = []
    while len(tokens) < 2 or tokens[-2]["token"] != "<|im_end|>":
        frame = await client.recv()
        assert frame["type"] == "token", frame
        tokens.append(frame)
    return tokens


async def new_session(gateway: Gateway) -> tuple[dict, list[dict]]:
    """Opens a session on a throwaway connection; returns the session frame and what was replayed after it."""
    async with open_client(gateway.ws_url) as ws:
        client = Client(ws)
        session = await client.hello()
        replayed = await client.until_event(session["last_event_id"]) if session["last_event_id"] else []
    return session, replayed


async def test_new_session_frame_and_system_prompt_replay(gateway: Gateway) -> None:
    session, replayed = await new_session(gateway)
    assert session["event_id"] == 0
    assert session["protocol"] == "haloweave.chat.v1"
    assert len(session["token"]) >= 40 and session["resumed"] is False
    assert session["model"]
    assert session["settings"]["aggregation"] == "mean"
    assert session["settings"]["max_context_tokens"] >= 0
    tokens = [f for f in replayed if f["type"] == "token"]
    assert tokens and tokens[0]["role"] == "system" and tokens[0]["token"] == "<|im_start|>"
    ids = [f["event_id"] for f in replayed]
    assert ids == sorted(set(ids)) and ids[-1] == session["last_event_id"]


async def test_resume_replays_exactly_once_in_order(gateway: Gateway, redis: Redis) -> None:
    session, replayed = await new_session(gateway)
    sid, token = session["session_id"], session["token"]
    seen_up_to = replayed[-1]["event_id"]
    # Events appended while nobody is connected, through the same append path the tracker and workers use.
    missed = [("brightness", {"step": i, "turn_id": 1, "positions": [i], "scores": [i / 10]}) for i in range(40)]
    last_missed = await events.append_events(redis, sid, missed)

    async with open_client(gateway.ws_url) as ws:
        client = Client(ws)
        resumed = await client.hello(session_id=sid, token=token, last_event_id=seen_up_to)
        assert resumed["resumed"] is True and resumed["event_id"] == seen_up_to
        assert resumed["last_event_id"] == last_missed
        frames = await client.until_event(last_missed)
        assert [f["event_id"] for f in frames] == list(range(seen_up_to + 1, last_missed + 1))
        assert [f["step"] for f in frames] == list(range(40))
        # Live events keep flowing after the replay, each once.
        live = await events.append_event(redis, sid, "pruned", {"positions": [3, 4], "turn_id": 0, "sentence_id": 0})
        frame = await client.recv()
        assert frame == {"type": "pruned", "event_id": live, "positions": [3, 4], "turn_id": 0, "sentence_id": 0}

    # A reload (no last_event_id) replays everything from the start, again exactly once.
    async with open_client(gateway.ws_url) as ws:
        client = Client(ws)
        again = await client.hello(session_id=sid, token=token)
        assert again["event_id"] == 0
        frames = await client.until_event(live)
        assert [f["event_id"] for f in frames] == list(range(1, live + 1))


async def test_resume_refuses_wrong_token_unknown_session_and_other_sessions_token(gateway: Gateway) -> None:
    first, _ = await new_session(gateway)
    second, _ = await new_session(gateway)
    async with open_client(gateway.ws_url) as ws:
        client = Client(ws)
        for hello, code in [
            ({"session_id": first["session_id"], "token": "x" * 43}, "unauthorized"),
            ({"session_id": first["session_id"], "token": second["token"]}, "unauthorized"),
            ({"session_id": first["session_id"]}, "unauthorized"),
            ({"session_id": "0" * 32, "token": first["token"]}, "unknown_session"),
        ]:
            await client.send({"type": "hello", **hello})
            frame = await client.recv()
            assert (frame["type"], frame["code"], frame["event_id"]) == ("error", code, 0), frame
        # Nothing of either session leaked, and the connection is still usable: the right token works.
        session = await client.hello(session_id=first["session_id"], token=first["token"])
        assert session["session_id"] == first["session_id"]


async def test_bad_input_gets_error_frames_and_connection_stays_usable(gateway: Gateway) -> None:
    async with open_client(gateway.ws_url) as ws:
        client = Client(ws)
        cases: list[tuple[str | dict, str]] = [
            ("{not json", "bad_json"),
            ("[1, 2]", "bad_json"),
            ({"type": "launch_rockets"}, "unknown_type"),
            ({"text": "no type"}, "unknown_type"),
            ({"type": "user_message", "text": "before hello"}, "no_session"),
            ({"type": "hello", "last_event_id": -1, "session_id": "abc", "token": "t"}, "bad_frame"),
            ({"type": "hello", "token": "t"}, "bad_frame"),
            ("x" * (64 * 1024 + 1), "frame_too_large"),
        ]
        for frame, code in cases:
            await client.send(frame)
            reply = await client.recv()
            assert (reply["type"], reply["code"], reply["event_id"]) == ("error", code, 0), (frame, reply)
        await ws.send(b"\x00binary")
        assert (await client.recv())["code"] == "bad_json"

        session = await client.hello()
        await client.until_event(session["last_event_id"])
        # With a session, errors are events of its Stream addressed to this connection: ids keep increasing.
        ids = [session["last_event_id"]]
        for frame, code in [
            ("nope", "bad_json"),
            ({"type": "user_message", "text": "   "}, "bad_frame"),
            ({"type": "user_message", "text": 42}, "bad_frame"),
            ({"type": "settings", "settings": "fast"}, "bad_frame"),
            ({"type": "settings", "settings": {"warp_speed": 9}}, "invalid_settings"),
            ({"type": "settings", "settings": {"decay_rate": "high"}}, "invalid_settings"),
            ({"type": "settings", "settings": {"decay_mode": "sideways"}}, "invalid_settings"),
            ({"type": "settings", "settings": {"max_context_tokens": True}}, "invalid_settings"),
            ({"type": "settings", "settings": {"prune_policy": "lru"}}, "invalid_settings"),
            ({"type": "settings", "settings": {"max_context_tokens": 3}}, "invalid_settings"),  # below the protected
            ({"type": "hello"}, "session_bound"),
        ]:
            await client.send(frame)
            reply = await client.recv()
            assert (reply["type"], reply["code"]) == ("error", code), (frame, reply)
            assert reply["event_id"] > ids[-1]
            assert "connection" not in reply
            ids.append(reply["event_id"])


async def test_settings_change_is_applied_and_announced(gateway: Gateway) -> None:
    async with open_client(gateway.ws_url) as ws:
        client = Client(ws)
        session = await client.hello()
        await client.until_event(session["last_event_id"])
        await client.send(
            {"type": "settings", "settings": {"decay_rate": 0.01, "max_context_tokens": 128, "prune_policy": "h2o"}}
        )
        frame, _ = await client.until("settings")
        assert frame["settings"]["decay_rate"] == pytest.approx(0.01)
        assert frame["settings"]["max_context_tokens"] == 128
        assert frame["settings"]["prune_policy"] == "h2o"
        assert frame["settings"]["aggregation"] == "mean"  # untouched fields keep their values


async def test_user_message_enqueues_one_generate_job_and_busy_until_done(gateway: Gateway, redis: Redis) -> None:
    async with open_client(gateway.ws_url) as ws:
        client = Client(ws)
        session = await client.hello()
        sid = session["session_id"]
        await client.until_event(session["last_event_id"])
        before = await redis.xlen(keys.JOBS_STREAM)
        await client.send({"type": "user_message", "text": "Hello there. How are you?"})
        user_tokens = await read_message(client)
        assert {t["role"] for t in user_tokens} == {"user"}
        # The job is enqueued right after the tracker appended the message (whose tokens we already saw).
        await eventually(lambda: redis.xlen(keys.JOBS_STREAM), before + 1)
        _, job = (await redis.xrevrange(keys.JOBS_STREAM, count=1))[0]
        job = {k.decode(): v.decode() for k, v in job.items()}
        assert job["type"] == "generate" and job["session_id"] == sid and len(job["job_id"]) == 32
        assert float(job["enqueued_at"]) > 0

        await client.send({"type": "user_message", "text": "Are you still there?"})
        frame = await client.recv()
        assert (frame["type"], frame["code"]) == ("error", "busy")
        assert await redis.xlen(keys.JOBS_STREAM) == before + 1  # refused: nothing enqueued

        # Cancel with no reply open yet is accepted quietly; the reply ending (here an appended `done`) frees the
        # connection for the next message.
        await client.send({"type": "cancel"})
        done = await events.append_event(redis, sid, "done", {"turn_id": 2, "stats": {"reason": "cancelled"}})
        frames = await client.until_event(done)
        assert [f["type"] for f in frames] == ["done"]
        await client.send({"type": "user_message", "text": "Second question."})
        assert (await read_message(client))[0]["token"] == "<|im_start|>"
        await eventually(lambda: redis.xlen(keys.JOBS_STREAM), before + 2)


async def test_two_connections_of_one_session_see_the_same_events(gateway: Gateway, redis: Redis) -> None:
    session, replayed = await new_session(gateway)
    sid, token, last = session["session_id"], session["token"], replayed[-1]["event_id"]
    async with open_client(gateway.ws_url) as a, open_client(gateway.ws_url) as b:
        ca, cb = Client(a), Client(b)
        await ca.hello(session_id=sid, token=token, last_event_id=last)
        await cb.hello(session_id=sid, token=token, last_event_id=last)
        await ca.send("garbage")  # an error for connection A only
        own = await ca.recv()
        assert own["code"] == "bad_json"
        shared = await events.append_event(redis, sid, "brightness", {"step": 0, "positions": [1], "scores": [0.5]})
        assert (await ca.recv())["event_id"] == shared
        got_b = await cb.recv()
        assert got_b["event_id"] == shared, "B must not see A's error"
        assert json.dumps(got_b).find("bad_json") == -1


async def test_a_reply_whose_worker_vanished_does_not_block_the_next_message(
    gateway: Gateway, redis: Redis, tracker_addr: str
) -> None:
    """A worker that opened a reply and vanished (its stream ended with neither Finish nor Fail) leaves the reply
    orphaned: the next user message closes it (`aborted`, naming the old job) and goes ahead, instead of `busy`."""
    import grpc
    from haloweave.tracker.v1 import tracker_pb2, tracker_pb2_grpc

    session, _ = await new_session(gateway)
    sid, token = session["session_id"], session["token"]
    async with open_client(gateway.ws_url) as ws:
        client = Client(ws)
        await client.hello(session_id=sid, token=token, last_event_id=session["last_event_id"])
        await client.send({"type": "user_message", "text": "Hello there."})
        await read_message(client)
        _, job = (await redis.xrevrange(keys.JOBS_STREAM, count=1))[0]
        job_id = job[b"job_id"].decode()
        async with grpc.aio.insecure_channel(tracker_addr) as channel:
            call = tracker_pb2_grpc.TrackerStub(channel).Generate()
            await call.write(tracker_pb2.GenerateRequest(open=tracker_pb2.Open(session_id=sid, job_id=job_id)))
            assert (await call.read()).HasField("opened")
            call.cancel()  # the worker is gone
        header = await read_message_start(client)
        last = header[-1]["event_id"]

    async with open_client(gateway.ws_url) as ws:  # the page reloaded
        client = Client(ws)
        await client.hello(session_id=sid, token=token, last_event_id=last)
        deadline = asyncio.get_running_loop().time() + 10
        while True:  # the tracker marks the reply orphaned just after the stream ends
            await client.send({"type": "user_message", "text": "Are you still there?"})
            frame = await client.recv()
            if frame["type"] != "error" or frame["code"] != "busy":
                break
            assert asyncio.get_running_loop().time() < deadline, "still busy: the dead reply blocks the session"
            await asyncio.sleep(0.1)
        # The old reply is closed (its template trailer, then the error), then the new message goes in.
        seen = [frame]
        while not (seen[-1]["type"] == "token" and seen[-1]["role"] == "user"):
            seen.append(await client.recv())
        errors = [(f["code"], f.get("job_id")) for f in seen if f["type"] == "error"]
        assert errors == [("aborted", job_id)], seen


async def read_message_start(client: Client) -> list[dict[str, Any]]:
    """The assistant header's token frames (`<|im_start|>assistant\\n`)."""
    tokens: list[dict[str, Any]] = []
    while not tokens or tokens[-1]["token"] != "\n":
        frame = await client.recv()
        if frame["type"] == "token":
            tokens.append(frame)
    return tokens
