"""The tracker as real processes over real gRPC: the Generate stream, refusals with status codes that change nothing,
two replicas on one session, a restart mid-conversation, and the metrics endpoint."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
from haloweave.tracker.v1 import tracker_pb2 as pb
from haloweave.tracker.v1 import tracker_pb2_grpc
from redis.asyncio import Redis

from devstack.procs import Proc, free_port, python_module, wait_until
from services.common import settings_wire
from services.common.grpc_server import channel, check_health

from .conftest import read_events


def healthy(address: str) -> bool:
    # In a thread with its own event loop: callers may be inside a running loop (async tests).
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, check_health(address)).result()


class Tracker:
    def __init__(self, redis_url: str, log_dir: Path, name: str) -> None:
        self.address = f"127.0.0.1:{free_port()}"
        self.metrics_port = free_port()
        env = {
            "HALOWEAVE_REDIS_URL": redis_url,
            "HALOWEAVE_TRACKER_LISTEN": self.address,
            "HALOWEAVE_TRACKER_METRICS_PORT": str(self.metrics_port),
        }
        self.proc = Proc(name, python_module("services.tracker"), env, log_dir / f"{name}.log")
        wait_until(lambda: healthy(self.address), 90, f"{name} health", self.proc)

    def stop(self) -> None:
        self.proc.stop()


@pytest.fixture(scope="module")
def trackers(redis_server: tuple[Proc, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Tracker]]:
    logs = tmp_path_factory.mktemp("tracker-logs")
    started = [Tracker(redis_server[1], logs, "tracker-a"), Tracker(redis_server[1], logs, "tracker-b")]
    try:
        yield started
    finally:
        for tracker in started:
            tracker.stop()


def stub_for(address: str) -> tuple[grpc.aio.Channel, tracker_pb2_grpc.TrackerStub]:
    ch = channel(address)
    return ch, tracker_pb2_grpc.TrackerStub(ch)


def frame(step: int, token_id: int, values: Any) -> pb.GenerateRequest:
    return pb.GenerateRequest(frame=pb.Frame(step=step, token_id=token_id, attention=list(values)))


async def open_stream(stub: tracker_pb2_grpc.TrackerStub, sid: str, job: str) -> tuple[Any, pb.Opened]:
    call = stub.Generate()
    await call.write(pb.GenerateRequest(open=pb.Open(session_id=sid, job_id=job)))
    reply = await call.read()
    return call, reply.opened


async def snapshot(stub: tracker_pb2_grpc.TrackerStub, sid: str) -> list[tuple[Any, ...]]:
    export = await stub.Export(pb.SessionRef(session_id=sid))
    return [
        (t.position, t.token_id, t.token, t.attention_score, t.turn_id, t.sentence_id, t.role, t.deleted)
        for t in export.tokens
    ]


async def test_a_reply_over_the_stream(trackers: list[Tracker], redis_server: tuple[Proc, str]) -> None:
    ch, stub = stub_for(trackers[0].address)
    async with ch:
        info = await stub.CreateSession(pb.CreateSessionRequest(settings=settings_wire.to_pb(min_distance=0)))
        sid = info.session_id
        effective = settings_wire.from_pb(info.settings)
        assert effective["decay_rate"] == pytest.approx(0.003) and effective["min_distance"] == 0
        appended = await stub.AppendMessage(pb.AppendMessageRequest(session_id=sid, role="user", text="Hi there."))
        call, opened = await open_stream(stub, sid, "job-1")
        n = len(opened.context.positions)
        assert opened.context.positions[-1] == opened.context.next_position - 1 > appended.last_position
        assert settings_wire.from_pb(opened.settings)["aggregation"] == "mean"
        with pytest.raises(grpc.aio.AioRpcError) as busy:
            await stub.AppendMessage(pb.AppendMessageRequest(session_id=sid, role="user", text="again"))
        assert busy.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        await call.write(frame(0, 28, np.full(n, 0.5)))
        directive = (await call.read()).directive
        assert directive.position == opened.context.next_position and not directive.HasField("settings")
        await stub.UpdateSettings(pb.UpdateSettingsRequest(session_id=sid, settings=settings_wire.to_pb(boost=3.0)))
        await stub.Cancel(pb.SessionRef(session_id=sid))
        await call.write(frame(1, 30, np.full(n + 1, 0.5)))
        directive = (await call.read()).directive
        assert settings_wire.from_pb(directive.settings)["boost"] == 3.0 and directive.cancel
        await call.write(pb.GenerateRequest(finish=pb.Finish(reason="cancelled", tokens=2)))
        closed = (await call.read()).closed
        assert closed.turn_id == opened.turn_id
        await call.done_writing()
        info = await stub.GetSession(pb.SessionRef(session_id=sid))
        assert not info.generating and info.turns == 3
    redis = Redis.from_url(redis_server[1])
    events = await read_events(redis, sid)
    await redis.aclose()
    types = [e["type"] for e in events]
    assert types.count("brightness") == 2 and types[-1] == "done" and "settings" in types
    generated = [e for e in events if e["type"] == "token" and e["position"] == directive.position]
    assert generated[0]["token_id"] == 30 and generated[0]["role"] == "assistant"


async def test_a_second_stream_of_the_same_job_continues_the_reply_and_fences_the_first(
    trackers: list[Tracker], redis_server: tuple[Proc, str]
) -> None:
    """A worker that died (or whose stream broke) mid-reply: the job's next stream continues the same turn from the
    committed step; the first stream can commit nothing more, and its end orphans nothing."""
    ch, stub = stub_for(trackers[0].address)
    async with ch:
        sid = (
            await stub.CreateSession(pb.CreateSessionRequest(settings=settings_wire.to_pb(min_distance=0)))
        ).session_id
        await stub.AppendMessage(pb.AppendMessageRequest(session_id=sid, role="user", text="Hi there."))
        first, opened = await open_stream(stub, sid, "job-r")
        n = len(opened.context.positions)
        assert opened.resumed_step == 0
        for step, token in enumerate((40, 41)):
            await first.write(frame(step, token, np.full(n + step, 0.5)))
            await first.read()
        second, resumed = await open_stream(stub, sid, "job-r")
        assert resumed.turn_id == opened.turn_id and resumed.resumed_step == 2
        assert list(resumed.context.token_ids) == [*opened.context.token_ids, 40, 41]  # no second header
        await first.write(frame(2, 42, np.full(n + 2, 0.5)))
        with pytest.raises(grpc.aio.AioRpcError) as fenced:
            await first.read()
        assert fenced.value.code() == grpc.StatusCode.ABORTED
        first.cancel()
        await asyncio.sleep(0.3)  # the first stream's end is recorded in the background: it must orphan nothing
        with pytest.raises(grpc.aio.AioRpcError) as busy:
            await stub.AppendMessage(pb.AppendMessageRequest(session_id=sid, role="user", text="again"))
        assert busy.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        await second.write(frame(2, 43, np.full(n + 2, 0.5)))
        assert (await second.read()).directive.position == opened.context.next_position + 2
        await second.write(pb.GenerateRequest(finish=pb.Finish(reason="length", tokens=3)))
        assert (await second.read()).closed.turn_id == opened.turn_id
        await second.done_writing()
        with pytest.raises(grpc.aio.AioRpcError) as finished:
            await open_stream(stub, sid, "job-r")
        assert finished.value.code() == grpc.StatusCode.ALREADY_EXISTS
    redis = Redis.from_url(redis_server[1])
    events = await read_events(redis, sid)
    await redis.aclose()
    types = [e["type"] for e in events]
    assert types.count("done") == 1 and "error" not in types
    reply = [e["token_id"] for e in events if e["type"] == "token" and e["turn_id"] == opened.turn_id]
    assert [t for t in reply if t in (40, 41, 42, 43)] == [40, 41, 43]  # 42, of the fenced stream, never landed


BAD_FRAMES = {
    "short": lambda n: frame(0, 5, np.full(n - 1, 0.1)),
    "nan": lambda n: frame(0, 5, [0.1] * (n - 1) + [float("nan")]),
    "inf": lambda n: frame(0, 5, [float("inf")] + [0.1] * (n - 1)),
    "negative": lambda n: frame(0, 5, [0.1] * (n - 1) + [-0.01]),
    "out_of_order": lambda n: frame(3, 5, np.full(n, 0.1)),
    "full_wrong_size": lambda n: pb.GenerateRequest(
        frame=pb.Frame(step=0, token_id=5, full_attention=b"\x00" * 6, layers=1, heads=1)
    ),
}


async def test_refused_frames_change_nothing(trackers: list[Tracker]) -> None:
    ch, stub = stub_for(trackers[0].address)
    async with ch:
        with pytest.raises(grpc.aio.AioRpcError) as unknown:
            await open_stream(stub, "no-such-session", "j")
        assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
        early = stub.Generate()
        await early.write(frame(0, 5, [0.1]))
        with pytest.raises(grpc.aio.AioRpcError) as not_open:
            await early.read()
        assert not_open.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        sid = (await stub.CreateSession(pb.CreateSessionRequest(system_prompt="S."))).session_id
        await stub.AppendMessage(pb.AppendMessageRequest(session_id=sid, role="user", text="Hello."))
        for job, make in BAD_FRAMES.items():
            # Each refusal ends its stream; the next Open takes the abandoned reply over.
            call, opened = await open_stream(stub, sid, job)
            before = await snapshot(stub, sid)
            await call.write(make(len(opened.context.positions)))
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await call.read()
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, job
            assert "frame" in (refused.value.details() or ""), job
            assert await snapshot(stub, sid) == before, job
        with pytest.raises(grpc.aio.AioRpcError) as bad_setting:
            await stub.UpdateSettings(
                pb.UpdateSettingsRequest(session_id=sid, settings=pb.Settings(json='{"decay_mode": "sometimes"}'))
            )
        assert bad_setting.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "settings.decay_mode" in (bad_setting.value.details() or "")
        metrics = httpx.get(f"http://127.0.0.1:{trackers[0].metrics_port}/metrics").text
        assert 'haloweave_tracker_frame_errors_total{code="invalid_argument"}' in metrics


async def drive(stubs: list[tracker_pb2_grpc.TrackerStub]) -> list[tuple[Any, ...]]:
    """One scripted conversation; consecutive calls go to consecutive stubs (one stub = one replica)."""
    pick = iter(stubs * 200)
    settings = settings_wire.to_pb(max_context_tokens=45, min_distance=2, distance_mode="linear")
    sid = (await next(pick).CreateSession(pb.CreateSessionRequest(settings=settings, system_prompt="Sys."))).session_id
    rng = np.random.default_rng(7)
    for turn in range(3):
        text = f"Question {turn}. It has two sentences! And a third?"
        await next(pick).AppendMessage(pb.AppendMessageRequest(session_id=sid, role="user", text=text))
        call, opened = await open_stream(next(pick), sid, f"job{turn}")
        n = len(opened.context.positions)
        for step in range(5):
            change = settings_wire.to_pb(boost=1.0 + step, decay_mode="exponential" if step % 2 else "additive")
            await next(pick).UpdateSettings(pb.UpdateSettingsRequest(session_id=sid, settings=change))
            await call.write(frame(step, 100 + step, rng.random(n)))
            directive = (await call.read()).directive
            n = n + 1 - len(directive.evict_positions)
        await call.write(pb.GenerateRequest(finish=pb.Finish(reason="length", tokens=5)))
        await call.read()
        await call.done_writing()
    return await snapshot(stubs[0], sid)


async def test_two_replicas_equal_one(trackers: list[Tracker]) -> None:
    ch_a, a = stub_for(trackers[0].address)
    ch_b, b = stub_for(trackers[1].address)
    async with ch_a, ch_b:
        single = await drive([a])
        alternating = await drive([a, b])
    assert [row[:1] + row[2:] for row in single] == [row[:1] + row[2:] for row in alternating]
    assert any(row[-1] for row in single)  # pruning took place


async def test_restart_mid_conversation_keeps_positions(
    redis_server: tuple[Proc, str], tmp_path_factory: pytest.TempPathFactory
) -> None:
    logs = tmp_path_factory.mktemp("restart")
    first = Tracker(redis_server[1], logs, "tracker-r1")
    try:
        ch, stub = stub_for(first.address)
        async with ch:
            sid = (await stub.CreateSession(pb.CreateSessionRequest())).session_id
            call, opened = await open_stream(stub, sid, "j")
            await call.write(frame(0, 5, np.full(len(opened.context.positions), 0.2)))
            directive = (await call.read()).directive
    finally:
        first.stop()  # the stream's worker is gone with it
    second = Tracker(redis_server[1], logs, "tracker-r2")
    try:
        ch, stub = stub_for(second.address)
        async with ch:
            call, reopened = await open_stream(stub, sid, "j2")  # takes the abandoned reply over
            assert reopened.context.positions[0] == 0
            assert min(p for p in reopened.context.positions if p > directive.position) > directive.position
            await call.write(pb.GenerateRequest(fail=pb.Fail(code="internal", message="gave up")))
            await call.read()
            appended = await stub.AppendMessage(pb.AppendMessageRequest(session_id=sid, role="user", text="Still?"))
            rows = await snapshot(stub, sid)
    finally:
        second.stop()
    positions = [row[0] for row in rows]
    assert positions == list(range(len(positions)))  # never reused, no gaps from the restart
    assert appended.last_position == positions[-1]
