"""Two workers on one job Stream: a session's jobs follow the worker holding its cache; a dead owner is replaced."""

from __future__ import annotations

from services.inference.affinity import owner_key
from services.inference.engine import Engine

from .conftest import Chat


def generate_jobs(handle) -> int:
    return sum(n for (job_type, _), n in handle.worker.stats.jobs.items() if job_type == "generate")


async def test_jobs_follow_the_owner_and_another_worker_takes_over_when_it_dies(
    chat: Chat, start_worker, worker_engine: Engine
) -> None:
    workers = {name: await start_worker(name) for name in ("w-a", "w-b")}
    session = await chat.session(max_new_tokens=2)
    for text in ("One.", "Two."):
        assert (await chat.turn(session, text))[-1]["type"] == "done"
    owner = (await chat.redis.get(owner_key(session))).decode()
    other = "w-b" if owner == "w-a" else "w-a"
    assert generate_jobs(workers[owner]) == 2 and generate_jobs(workers[other]) == 0
    assert workers[owner].worker.last_reply is not None and not workers[owner].worker.last_reply.rebuilt

    await workers[owner].shutdown()  # its heartbeat key goes with it
    await chat.say(session, "Three.")
    history = len((await chat.context(session)).positions)
    assert await chat.job_done(await chat.enqueue(session)) in ("eos", "length")
    assert (await chat.redis.get(owner_key(session))).decode() == other
    assert generate_jobs(workers[other]) == 1
    last = workers[other].worker.last_reply
    # No cache and no offload: the new owner prefilled the whole active context the tracker gave it.
    header = worker_engine.tokenizer.encode("<|im_start|>assistant\n", add_special_tokens=False)
    assert last is not None and last.prefill_tokens == history + len(header)
