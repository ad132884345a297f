"""Pure parts of the gateway: frame parsing, settings conversion, token hashing, the relay's frame splicing."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from redis.asyncio import Redis

from services.common import events, keys, settings_wire
from services.common.errors import InvalidArgument
from services.common.session_settings import SessionSettings
from services.gateway import auth, protocol, settings_codec
from services.gateway.relay import Outbox, Outgoing, StreamReader


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        ("", protocol.BAD_JSON),
        ("null", protocol.BAD_JSON),
        ('"hello"', protocol.BAD_JSON),
        ('{"type": 5}', protocol.UNKNOWN_TYPE),
        ('{"type": "hello", "last_event_id": true, "session_id": "s", "token": "t"}', protocol.BAD_FRAME),
        ('{"type": "hello", "session_id": ""}', protocol.BAD_FRAME),
        ('{"type": "hello", "session_id": "s"}', protocol.UNAUTHORIZED),
        ('{"type": "user_message"}', protocol.BAD_FRAME),
        ('{"type": "user_message", "text": "' + "a" * 101 + '"}', protocol.FRAME_TOO_LARGE),
        ('{"type": "settings"}', protocol.BAD_FRAME),
    ],
)
def test_parse_refuses_with_a_stable_code(raw: str, code: str) -> None:
    with pytest.raises(protocol.ProtocolError) as refused:
        protocol.parse(raw, max_frame_bytes=1024, max_message_chars=100)
    assert refused.value.code == code


def test_parse_accepts_each_client_frame_and_ignores_unknown_fields() -> None:
    hello = protocol.parse('{"type":"hello","session_id":"s","token":"t","last_event_id":4,"x":1}', 1024, 100)
    assert (hello.session_id, hello.token, hello.last_event_id) == ("s", "t", 4)
    assert protocol.parse('{"type":"user_message","text":"hi"}', 1024, 100).text == "hi"
    assert protocol.parse('{"type":"settings","settings":{"boost":2}}', 1024, 100).settings == {"boost": 2}
    assert protocol.parse('{"type":"cancel"}', 1024, 100).type == "cancel"
    assert protocol.parse(b'{"type":"hello"}', 1024, 100).session_id is None


def test_settings_round_trip_and_refusals() -> None:
    given_settings = {"aggregation": "max", "decay_rate": 1, "max_context_tokens": 64, "seed": 2**40, "stop": ["x"]}
    message = settings_codec.to_pb(given_settings)
    assert settings_wire.from_pb(message) == {**given_settings, "decay_rate": 1.0}  # only the given ones travel
    # What comes back from the tracker is every setting: the given ones over the defaults.
    assert settings_codec.from_pb(message) == {**SessionSettings().to_dict(), **given_settings, "decay_rate": 1.0}
    assert settings_wire.from_pb(settings_codec.to_pb({"clear_stop": True})) == {"stop": []}
    assert settings_wire.from_pb(settings_codec.to_pb({"stop": []})) == {"stop": []}
    for bad in [{"nope": 1}, {"boost": "1"}, {"min_distance": 1.5}, {"min_distance": True}, {"stop": [""]},
                {"max_new_tokens": 2**31}, [("boost", 1)], {"boost": None}, {"top_p": 0}]:  # fmt: skip
        with pytest.raises(InvalidArgument):
            settings_codec.to_pb(bad)


async def test_token_check_is_by_hash_and_per_session(redis_url: str) -> None:
    redis = Redis.from_url(redis_url)
    try:
        token, other = auth.new_token(), auth.new_token()
        assert token != other and len(token) >= 43
        await auth.register(redis, "s1", token)
        await auth.register(redis, "s2", other)
        assert (await redis.get("hw:auth:{s1}")).decode() == auth.digest(token)  # only the hash is stored
        assert await auth.check(redis, "s1", token) == "ok"
        assert await auth.check(redis, "s1", other) == "unauthorized"
        assert await auth.check(redis, "s1", None) == "unauthorized"
        assert await auth.check(redis, "nope", token) == "unknown_session"
        with pytest.raises(RuntimeError):
            await auth.register(redis, "s1", other)  # a token is never replaced
        assert await auth.check(redis, "s1", token) == "ok"
    finally:
        await redis.aclose()


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=10,
)


@given(
    kind=st.sampled_from(["token", "brightness", "pruned", "done", "settings", "attention"]),
    data=st.dictionaries(st.text(max_size=10), json_values, max_size=5),
    event_id=st.integers(1, 10**9),
)
def test_spliced_frames_equal_decoded_frames(kind: str, data: dict[str, Any], event_id: int) -> None:
    reader = StreamReader.__new__(StreamReader)
    reader.connection_id = "me"
    seen: list[dict[str, Any]] = []
    reader.on_event = seen.append
    fields = {b"type": kind.encode(), b"data": json.dumps(data, separators=(",", ":")).encode()}
    item = reader._outgoing(f"{event_id}-0", fields, 0.0)
    assert isinstance(item, Outgoing) and item.type == kind
    assert json.loads(item.text) == events.decode(f"{event_id}-0", fields)
    assert seen and seen[0]["type"] == kind


def test_errors_for_another_connection_are_skipped() -> None:
    reader = StreamReader.__new__(StreamReader)
    reader.connection_id = "me"
    reader.on_event = lambda frame: None
    mine = {b"type": b"error", b"data": b'{"code":"bad_json","message":"m","connection":"me"}'}
    theirs = {b"type": b"error", b"data": b'{"code":"bad_json","message":"m","connection":"you"}'}
    job = {b"type": b"error", b"data": b'{"code":"aborted","message":"m","job_id":"j"}'}
    assert reader._outgoing("5-0", theirs, 0.0) is None
    frame = json.loads(reader._outgoing("5-0", mine, 0.0).text)  # type: ignore[union-attr]
    assert frame == {"type": "error", "event_id": 5, "code": "bad_json", "message": "m"}
    assert json.loads(reader._outgoing("6-0", job, 0.0).text)["job_id"] == "j"  # type: ignore[union-attr]


def test_outbox_overflow_only_after_the_stall_timeout() -> None:
    async def scenario() -> str:
        reader = StreamReader.__new__(StreamReader)
        reader.outbox = Outbox(1, 1 << 20)
        reader.stall_timeout = 30.0
        await reader._put(Outgoing("a", "token", None))
        asyncio.get_running_loop().call_soon(reader.outbox.get_nowait)
        await reader._put(Outgoing("b", "token", None))  # room is made while it waits: no overflow
        reader.stall_timeout = 0.01
        try:
            await reader._put(Outgoing("c", "token", None))  # nobody drains: overflow
        except Exception as error:
            return type(error).__name__
        return "no overflow"

    assert asyncio.run(scenario()) == "Overflow"


def test_outbox_is_bounded_in_bytes_but_takes_one_frame_of_any_size() -> None:
    async def scenario() -> None:
        outbox = Outbox(max_frames=100, max_bytes=10)
        outbox.put_nowait(Outgoing("x" * 50, "attention", None))  # alone: larger than the bound, still taken
        with pytest.raises(asyncio.QueueFull):
            outbox.put_nowait(Outgoing("y", "token", None))
        assert outbox.get_nowait().text == "x" * 50 and outbox.bytes == 0
        outbox.put_nowait(Outgoing("a" * 6, "token", None))
        waiting = asyncio.ensure_future(outbox.put(Outgoing("b" * 6, "token", None)))
        await asyncio.sleep(0)
        assert not waiting.done() and len(outbox) == 1
        assert (await outbox.get()).text == "a" * 6
        await asyncio.wait_for(waiting, 1)
        assert len(outbox) == 1 and outbox.bytes == 6

    asyncio.run(scenario())


async def test_events_trimmed_under_the_reader_become_one_frame_in_their_place(redis_url: str) -> None:
    redis = Redis.from_url(redis_url)
    try:
        await events.append_events(redis, "s", [("token", {"position": p}) for p in range(1, 21)])
        # Trimmed as a byte budget would, while the reader lagged behind.
        await redis.xtrim(keys.events_stream("s"), minid="10-0", approximate=False)
        outbox = Outbox(100, 1 << 20)
        reader = StreamReader(redis, "s", 3, "me", outbox, lambda frame: None, 1.0)
        task = asyncio.create_task(reader.run())
        try:
            deadline = asyncio.get_running_loop().time() + 10
            while len(outbox) < 12:
                assert asyncio.get_running_loop().time() < deadline
                await asyncio.sleep(0.01)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        frames = [json.loads(outbox.get_nowait().text) for _ in range(len(outbox))]
        assert frames[0]["type"] == "error" and frames[0]["code"] == "replay_truncated"
        assert frames[0]["event_id"] == 9 and "4..9" in frames[0]["message"]
        assert [f["event_id"] for f in frames[1:]] == list(range(10, 21))

        # A reader told at hello that the replay is truncated does not say it twice.
        outbox = Outbox(100, 1 << 20)
        reader = StreamReader(redis, "s", 0, "me", outbox, lambda frame: None, 1.0, truncated=True)
        task = asyncio.create_task(reader.run())
        try:
            while len(outbox) < 11:
                await asyncio.sleep(0.01)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        assert [json.loads(outbox.get_nowait().text)["event_id"] for _ in range(11)] == list(range(10, 21))
    finally:
        await redis.aclose()
