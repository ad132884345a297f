"""Tracker.DeleteSession over real gRPC, with two replicas: the erase leaves no key of the session in Redis, and a
reply still streaming on the other replica cannot write anything of it again."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import numpy as np
import pytest
from haloweave.tracker.v1 import tracker_pb2 as pb
from redis.asyncio import Redis

from devstack.procs import Proc

from .test_grpc import Tracker, frame, open_stream, stub_for


@pytest.fixture(scope="module")
def replicas(redis_server: tuple[Proc, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Tracker]]:
    logs = tmp_path_factory.mktemp("tracker-delete-logs")
    started = [Tracker(redis_server[1], logs, "tracker-del-a"), Tracker(redis_server[1], logs, "tracker-del-b")]
    try:
        yield started
    finally:
        for tracker in started:
            tracker.stop()


async def keys_naming(redis: Redis, session_id: str) -> list[bytes]:
    return [key async for key in redis.scan_iter(match=f"*{session_id}*", count=1000)]


async def test_delete_erases_every_key_and_fences_a_running_reply(
    replicas: list[Tracker], redis_server: tuple[Proc, str]
) -> None:
    redis = Redis.from_url(redis_server[1])
    ch_a, a = stub_for(replicas[0].address)
    ch_b, b = stub_for(replicas[1].address)
    async with ch_a, ch_b:
        sid = (await a.CreateSession(pb.CreateSessionRequest())).session_id
        other = (await a.CreateSession(pb.CreateSessionRequest())).session_id
        await a.AppendMessage(pb.AppendMessageRequest(session_id=sid, role="user", text="Erase me. Please."))
        call, opened = await open_stream(a, sid, "job-del")
        n = len(opened.context.positions)
        await call.write(frame(0, 28, np.full(n, 0.5)))
        await call.read()
        await b.GetSession(pb.SessionRef(session_id=sid))  # replica b holds it too now
        assert await keys_naming(redis, sid)

        erased = await b.DeleteSession(pb.SessionRef(session_id=sid))
        assert erased.keys >= 5 and erased.cached
        assert await keys_naming(redis, sid) == []

        # The stream replica a still has open: its next step is refused, and writes nothing of the session.
        await call.write(frame(1, 30, np.full(n + 1, 0.5)))
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await call.read()
        assert refused.value.code() == grpc.StatusCode.NOT_FOUND
        for stub in (a, b):
            with pytest.raises(grpc.aio.AioRpcError) as gone:
                await stub.GetSession(pb.SessionRef(session_id=sid))
            assert gone.value.code() == grpc.StatusCode.NOT_FOUND
        assert await keys_naming(redis, sid) == []

        again = await a.DeleteSession(pb.SessionRef(session_id=sid))
        assert again.keys == 0 and not again.cached
        with pytest.raises(grpc.aio.AioRpcError) as empty:
            await a.DeleteSession(pb.SessionRef(session_id=""))
        assert empty.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        # Another session is untouched.
        assert (await a.GetSession(pb.SessionRef(session_id=other))).session_id == other
    await redis.aclose()
