"""services.common.tasks.end: a task that survives its first cancellation is cancelled again until it ends."""

from __future__ import annotations

import asyncio
import contextlib

from services.common import tasks


async def stubborn(survive: int, ended: list[str]) -> None:
    """Swallows its first `survive` cancellations, as a retry loop does when a cancellation became a time-out."""
    while True:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            if survive == 0:
                ended.append("ended")
                raise
            survive -= 1


async def test_a_task_that_swallows_cancellations_is_cancelled_until_it_ends() -> None:
    ended: list[str] = []
    task = asyncio.create_task(stubborn(2, ended))
    await asyncio.sleep(0)
    await asyncio.wait_for(tasks.end([task]), 10)
    assert task.cancelled() and ended == ["ended"]


async def test_one_that_never_ends_is_left_behind_after_the_time_limit() -> None:
    release = asyncio.Event()

    async def deaf() -> None:
        while not release.is_set():
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(0.05)

    task = asyncio.create_task(deaf())
    await asyncio.sleep(0)
    await asyncio.wait_for(tasks.end([task], give_up_after_s=1.0), 10)
    assert not task.done()
    release.set()
    await task


async def test_the_callers_own_cancellation_waits_for_the_tasks_to_end() -> None:
    ended: list[str] = []
    inner = asyncio.create_task(stubborn(1, ended))

    async def caller() -> None:
        await tasks.end([inner])

    outer = asyncio.create_task(caller())
    await asyncio.sleep(0.1)
    outer.cancel()  # while the caller waits: the inner task still ends, then the caller is cancelled
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.wait_for(outer, 10)
    assert outer.cancelled() and inner.done() and ended == ["ended"]
