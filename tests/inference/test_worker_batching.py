"""Several sessions on one worker at once, through the real tracker: they share forwards, a session still has one
reply at a time, and a full worker says so."""

from __future__ import annotations

import asyncio

from haloweave.tracker.v1 import tracker_pb2

from services.inference.jobs import done_key

from .conftest import Chat


async def test_replies_of_different_sessions_advance_in_the_same_forwards(chat: Chat, start_worker) -> None:
    handle = await start_worker()
    sessions = [await chat.session(max_new_tokens=12) for _ in range(3)]
    for session, text in zip(sessions, ("Name a colour.", "Name a fruit.", "Name a city in France."), strict=True):
        await chat.say(session, text)
    jobs = [await chat.enqueue(session) for session in sessions]
    outcomes = await asyncio.gather(*(chat.job_done(job) for job in jobs))
    assert all(outcome in ("eos", "length") for outcome in outcomes), outcomes
    for session in sessions:
        done = [f for f in await chat.events(session) if f["type"] == "done"]
        assert len(done) == 1 and done[0]["stats"]["tokens"] >= 1
    sizes = handle.worker.stats.histograms["batch_size"]
    assert sum(sizes.counts[1:]) > 0, f"no step ran more than one conversation: {sizes.counts}"


async def test_a_second_reply_for_a_generating_session_is_refused_as_busy(chat: Chat, start_worker) -> None:
    await start_worker()
    session = await chat.session(max_new_tokens=30)
    first = await chat.start_reply(session, "Write a short poem about the sea.")
    second = await chat.enqueue(session)
    assert await chat.job_done(second) == "error"
    errors = [f for f in await chat.events(session) if f["type"] == "error"]
    assert [e["code"] for e in errors] == ["busy"] and errors[0]["job_id"] == second
    assert "already generating" in errors[0]["message"]
    assert await chat.job_done(first) in ("eos", "length")
    done = [f for f in await chat.events(session) if f["type"] == "done"]
    assert len(done) == 1, "the running reply went on and ended once"


async def test_a_full_worker_answers_overloaded_and_serves_on(chat: Chat, start_worker) -> None:
    await start_worker(max_running=1, max_waiting=0, prefill_chunk_tokens=8)
    busy = await chat.session(max_new_tokens=200)
    first = await chat.start_reply(busy, "Write a long poem about the sea.")
    other = await chat.session(max_new_tokens=3)
    await chat.say(other, "Hi!")
    refused = await chat.enqueue(other)
    assert await chat.job_done(refused) == "error"
    error = next(f for f in await chat.events(other) if f["type"] == "error")
    assert error["code"] == "overloaded" and "try again" in error["message"] and error["job_id"] == refused
    await chat.tracker.Cancel(tracker_pb2.SessionRef(session_id=busy))
    assert await chat.job_done(first) == "cancelled"
    # Nothing of the refused reply was started: the same session is served once there is room.
    assert (await chat.turn(other, "Hello again?"))[-1]["type"] == "done"


async def test_the_next_message_right_after_done_is_served_while_the_last_job_tidies_up(
    chat: Chat, start_worker
) -> None:
    """The client has `done` as soon as the tracker closes the reply; the worker may still be on that job (closing the
    stream, putting the cache back). The next reply must wait for it, not be refused as busy."""
    handle = await start_worker()
    generate = handle.worker.batcher.generate

    async def slow_after_close(conversation):  # type: ignore[no-untyped-def]
        stats = await generate(conversation)
        await asyncio.sleep(1.0)  # the tracker has closed the reply; the worker is still on the job
        return stats

    handle.worker.batcher.generate = slow_after_close  # type: ignore[method-assign]
    session = await chat.session(max_new_tokens=4)
    await chat.say(session, "Name a colour.")
    first = await chat.enqueue(session)
    await chat.wait_for(session, lambda fs: any(f["type"] == "done" for f in fs))
    assert await chat.redis.get(done_key(first)) is None, "the first job is still at hand"
    await chat.say(session, "And another one?")
    second = await chat.enqueue(session)
    assert await chat.job_done(second) in ("eos", "length")
    frames = await chat.events(session)
    assert not [f for f in frames if f["type"] == "error"], frames
    assert len([f for f in frames if f["type"] == "done"]) == 2
