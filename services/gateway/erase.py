"""Erasing a session everywhere (DELETE /v1/sessions/{id}), through each service's own API, in an order that lets
nothing of it come back (docs/architecture.md "Erasing a session"):

1. mark it as being erased (`keys.erasing_key`): no job of it is enqueued from now on, no connection resumes it;
2. `Tracker.Cancel`: a reply running for it stops at its next step;
3. `Inference.ForgetSession`: its jobs leave the job Streams, every worker lets its running job end and drops the KV
   cache and cold tier, the service's records of it go. When this fails (a worker or the service does not answer)
   the mark is taken back and the DELETE answers 503: the session is as it was, less caches the workers rebuild;
4. announce it, so every gateway closes the connections bound to it (services/gateway/erasures.py);
5. `Snapshot.List` and `Snapshot.Delete` of each: user snapshots and offloaded caches alike (file or S3 store);
6. `Tracker.DeleteSession`: the dictionary, settings, counters and the event Stream, and the tracker's memory of it;
7. its token hash, then whatever its registry names and whatever else is named after it (keys.session_match), the
   mark included; the announcement once more, for a connection bound meanwhile.

Each step can run again, so an erase that fails after step 3 (503, the mark kept: the session takes no new job) is
finished by repeating the DELETE, which the token opens until step 7.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

from services.common import erasing, keys
from services.common.errors import NotFound
from services.gateway import erasures
from services.gateway.connection import Deps

log = logging.getLogger(__name__)


async def erase_session(deps: Deps, session_id: str) -> dict[str, Any]:
    """Erases the session; returns what was erased (the REST answer's body)."""
    redis, peers = deps.redis, deps.peers
    marked = bool(await redis.set(keys.erasing_key(session_id), "1", nx=True))
    try:
        with contextlib.suppress(NotFound):  # a session the tracker has already erased (a repeated DELETE)
            await peers.cancel(session_id)
        forgotten = await peers.forget_session(session_id)
    except BaseException:
        if marked:  # nothing is erased yet: the session goes on as before
            await redis.unlink(keys.erasing_key(session_id))
        raise
    await erasures.announce(redis, session_id)
    snapshots = []
    for snapshot in (await peers.list_snapshots(session_id)).snapshots:
        with contextlib.suppress(NotFound):  # deleted meanwhile (another DELETE of the same session)
            await peers.delete_snapshot(session_id, snapshot.snapshot_id)
        snapshots.append(snapshot.snapshot_id)
    tracker = await peers.delete_session(session_id)
    removed = int(await redis.unlink(keys.auth_key(session_id)))  # first: the token opens nothing from now on
    removed += await erasing.unlink_registered(redis, session_id)
    removed += await erasing.unlink_matching(redis, keys.session_match(session_id))
    await erasures.announce(redis, session_id)
    log.info("session %s erased", session_id)
    return {
        "session_id": session_id,
        "snapshots": snapshots,
        "workers": [
            {
                "worker_id": w.worker_id,
                "cached": w.cached,
                "kv_bytes": w.kv_bytes,
                "cold_bytes": w.cold_bytes,
                "waited": w.waited,
            }
            for w in forgotten.workers
        ],
        "jobs": forgotten.jobs_removed,
        "redis_keys": tracker.keys + forgotten.keys_removed + removed,
    }
