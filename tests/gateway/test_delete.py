"""DELETE /v1/sessions/{id} on a gateway whose workers do not answer (these tests run no inference service): the
erase is refused with 503 before anything is erased, and the session goes on exactly as before."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from haloweave.tracker.v1 import tracker_pb2
from haloweave.tracker.v1.tracker_pb2_grpc import TrackerStub
from redis.asyncio import Redis
from websockets.exceptions import ConnectionClosed

from services.common import keys
from services.common.grpc_server import channel
from services.gateway import erasures
from tests.gateway.conftest import Client, Gateway, open_client


@pytest.fixture
async def api(gateway: Gateway) -> Any:
    async with httpx.AsyncClient(base_url=gateway.url, timeout=90) as client:
        yield client


async def settled(client: Client, decay_rate: float) -> None:
    """Receives up to the `settings` frame that says `decay_rate` (a new session first replays its initial one)."""
    while True:
        frame, _ = await client.until("settings")
        if frame["settings"]["decay_rate"] == decay_rate:
            return


async def picture(redis: Redis, session_id: str) -> dict[bytes, Any]:
    """Every key named after the session, with its type and length (the event Stream's entries included)."""
    found = {}
    async for key in redis.scan_iter(match=keys.session_match(session_id), count=1000):
        raw = await redis.type(key)
        kind = raw.decode() if isinstance(raw, bytes) else raw
        size = await redis.xlen(key) if kind == "stream" else await redis.strlen(key) if kind == "string" else -1
        found[key] = (kind, size)
    return found


async def test_an_erase_the_workers_cannot_answer_is_refused_and_changes_nothing(gateway: Gateway, api: Any) -> None:
    redis = Redis.from_url(gateway.redis_url)
    async with open_client(gateway.ws_url) as ws:
        client = Client(ws)
        session = await client.hello()
        sid, token = session["session_id"], session["token"]
        await client.send({"type": "settings", "settings": {"decay_rate": 0.25}})
        await settled(client, 0.25)
        before = await picture(redis, sid)
        export = (await api.get(f"/v1/sessions/{sid}/export", headers={"Authorization": f"Bearer {token}"})).json()

        reply = await api.delete(f"/v1/sessions/{sid}", headers={"Authorization": f"Bearer {token}"})
        assert reply.status_code == 503, reply.text
        assert reply.json()["code"] == "unavailable" and reply.json()["message"]

        assert await picture(redis, sid) == before
        assert await redis.exists(keys.erasing_key(sid)) == 0
        again = await api.get(f"/v1/sessions/{sid}/export", headers={"Authorization": f"Bearer {token}"})
        assert again.status_code == 200 and again.json() == export
        # The connection is still bound and usable.
        await client.send({"type": "settings", "settings": {"decay_rate": 0.5}})
        await settled(client, 0.5)
    await redis.aclose()


async def test_a_session_being_erased_takes_no_job_and_no_resume(gateway: Gateway, api: Any) -> None:
    """While the mark is set (an erase under way, or one that failed after it began erasing), a snapshot job is
    refused at the door and a connection cannot resume the session."""
    redis = Redis.from_url(gateway.redis_url)
    async with open_client(gateway.ws_url) as ws:
        session = await Client(ws).hello()
    sid, token = session["session_id"], session["token"]
    jobs = await redis.xlen(keys.JOBS_STREAM)
    await redis.set(keys.erasing_key(sid), "1")
    try:
        taken = await api.post(f"/v1/sessions/{sid}/snapshots", headers={"Authorization": f"Bearer {token}"})
        assert taken.status_code == 404 and taken.json()["code"] == "unknown_session", taken.text
        assert await redis.xlen(keys.JOBS_STREAM) == jobs
        async with open_client(gateway.ws_url) as ws:
            client = Client(ws)
            await client.send({"type": "hello", "session_id": sid, "token": token})
            refused = await client.recv()
            assert refused["type"] == "error" and refused["code"] == "unknown_session", refused
    finally:
        await redis.unlink(keys.erasing_key(sid))
        await redis.aclose()


async def test_connections_of_an_erased_session_end_with_session_deleted_and_write_nothing(
    gateway: Gateway, tracker_addr: str
) -> None:
    """The announcement closes every connection bound to the session; a connection that sends a frame after the
    tracker erased the session (it missed the announcement) is closed the same way, and neither writes to the
    session's Stream again."""
    redis = Redis.from_url(gateway.redis_url)
    async with open_client(gateway.ws_url) as ws_a, open_client(gateway.ws_url) as ws_b:
        a, b = Client(ws_a), Client(ws_b)
        first = await a.hello()
        second = await b.hello()
        # Erased behind the gateway's back (as by a DELETE whose announcement this gateway missed).
        async with channel(tracker_addr) as ch:
            await TrackerStub(ch).DeleteSession(tracker_pb2.SessionRef(session_id=second["session_id"]))
        await b.send({"type": "user_message", "text": "Still there?"})
        await ended(b)
        # Only the gateway's token hash is left of it: the refused frame wrote no event.
        assert await picture(redis, second["session_id"]) == {
            keys.auth_key(second["session_id"]).encode(): ("string", 64)
        }
        # Announced: the other session's connection ends too, and its farewell is not written to its Stream.
        before = await picture(redis, first["session_id"])
        await erasures.announce(redis, first["session_id"])
        await ended(a)
        assert await picture(redis, first["session_id"]) == before
    await redis.aclose()


async def ended(client: Client) -> None:
    while (frame := await client.recv())["type"] != "error":
        pass
    assert frame["code"] == "session_deleted" and frame["event_id"] == 0, frame
    with pytest.raises(ConnectionClosed) as closed:
        await client.recv()
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4410
