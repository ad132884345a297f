"""Snapshot and restore jobs, and offloading under the memory budget, against real tracker and snapshot processes."""

from __future__ import annotations

from haloweave.snapshot.v1 import snapshot_pb2, snapshot_pb2_grpc

from services.common import grpc_server
from services.inference.worker import offload_key

from .conftest import Chat


def reply_ids(frames: list[dict]) -> list[int]:
    tokens = [f for f in frames if f["type"] == "token" and f["role"] == "assistant"]
    return [t["token_id"] for t in tokens]


async def snapshots_of(snapshot_addr: str, session_id: str) -> list[str]:
    async with grpc_server.channel(snapshot_addr) as channel:
        reply = await snapshot_pb2_grpc.SnapshotStub(channel).List(snapshot_pb2.ListRequest(session_id=session_id))
    return [s.snapshot_id for s in reply.snapshots]


async def test_a_restored_snapshot_continues_with_the_same_greedy_tokens(
    chat: Chat, start_worker, snapshot_addr: str
) -> None:
    first = await start_worker("w-a", snapshot_addr=snapshot_addr)
    session = await chat.session(max_new_tokens=6)
    await chat.turn(session, "Name three fruits.")
    job_id = await chat.enqueue(session, job_type="snapshot")
    assert await chat.job_done(job_id) == "ok"
    saved = next(f for f in await chat.events(session) if f["type"] == "snapshot_saved")
    assert saved["job_id"] == job_id and saved["tokens"] > 0 and saved["bytes"] > 0
    assert saved["snapshot_id"] in await snapshots_of(snapshot_addr, session)
    original = await chat.turn(session, "Which one is red?")
    assert original[-1]["type"] == "done"

    # Another worker (no cache of this session) restores the snapshot: the conversation forgets the second turn.
    await first.shutdown()
    second = await start_worker("w-b", snapshot_addr=snapshot_addr)
    job_id = await chat.enqueue(session, job_type="restore", snapshot_id=saved["snapshot_id"])
    assert await chat.job_done(job_id) == "ok"
    restored = next(f for f in await chat.events(session) if f["type"] == "snapshot_restored")
    assert restored["job_id"] == job_id and restored["active_tokens"] == saved["tokens"]
    assert len((await chat.context(session)).positions) == saved["tokens"]
    again = await chat.turn(session, "Which one is red?")
    assert again[-1]["type"] == "done"
    assert reply_ids(again) == reply_ids(original)
    last = second.worker.last_reply
    assert last is not None and not last.rebuilt  # continued from the restored cache, no replay of the prompt


async def test_a_missing_snapshot_fails_with_an_error_and_changes_nothing(
    chat: Chat, start_worker, snapshot_addr: str
) -> None:
    await start_worker(snapshot_addr=snapshot_addr)
    session = await chat.session(max_new_tokens=3)
    await chat.turn(session, "Hello.")
    before = list((await chat.context(session)).positions)
    job_id = await chat.enqueue(session, job_type="restore", snapshot_id="m1d1x0x0x0")
    assert await chat.job_done(job_id) == "error"
    error = next(f for f in await chat.events(session) if f["type"] == "error")
    assert error["job_id"] == job_id and error["code"] == "not_found"
    assert list((await chat.context(session)).positions) == before
    assert (await chat.turn(session, "Still there?"))[-1]["type"] == "done"


async def test_least_recently_used_sessions_are_offloaded_and_brought_back(
    chat: Chat, start_worker, snapshot_addr: str
) -> None:
    handle = await start_worker(snapshot_addr=snapshot_addr, kv_budget_bytes=1)  # room for one session only
    worker = handle.worker
    a = await chat.session(max_new_tokens=3)
    b = await chat.session(max_new_tokens=3)
    await chat.turn(a, "Hello from A.")
    await chat.turn(b, "Hello from B.")
    assert worker.stats.offloads == 1 and a not in worker.sessions and b in worker.sessions
    offloaded = (await chat.redis.get(offload_key(a))).decode()
    assert offloaded in await snapshots_of(snapshot_addr, a)

    frames = await chat.turn(a, "A again.")
    assert frames[-1]["type"] == "done"
    assert worker.stats.restores == 1 and worker.stats.offloads == 2  # A back in, B out
    last = worker.last_reply
    assert last is not None and not last.rebuilt
    assert await chat.redis.get(offload_key(a)) is None
    assert offloaded not in await snapshots_of(snapshot_addr, a)  # an offload is not the user's snapshot
