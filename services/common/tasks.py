"""Ending asyncio tasks for sure.

A cancellation can be lost: a library that meets it in the middle of its own time-out may turn it into a time-out
error, which a loop that retries on time-outs then survives (asyncio's `wait_for` in Python 3.11 also drops one that
races with the inner result). A task that must end (a worker's heartbeat, which would otherwise keep a dead worker
looking alive) is therefore cancelled again until it has.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable

log = logging.getLogger(__name__)

RECANCEL_EVERY_S = 0.5


async def end(tasks: Iterable[asyncio.Task[object]], give_up_after_s: float = 30.0) -> None:
    """Cancels the tasks and waits until every one has ended, cancelling again those still running; after
    `give_up_after_s` the ones left are logged and left behind. A cancellation of the caller meanwhile (it is ending
    too) does not cut this short: it is raised once the tasks have ended."""
    pending = {task for task in tasks if not task.done()}
    loop = asyncio.get_running_loop()
    deadline = loop.time() + give_up_after_s
    cancelled = False
    while pending:
        for task in pending:
            task.cancel()
        if loop.time() > deadline:
            log.error("tasks still running after %.0f s of cancelling: %s", give_up_after_s, sorted(map(str, pending)))
            break
        try:
            _done, pending = await asyncio.wait(pending, timeout=RECANCEL_EVERY_S)
        except asyncio.CancelledError:
            cancelled = True
    if cancelled:
        raise asyncio.CancelledError
