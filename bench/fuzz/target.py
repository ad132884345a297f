"""The system under fuzzing: real Redis, tracker, snapshot service and gateway processes on free ports.

No inference worker runs: a refused input must never reach one, and an accepted `user_message` is checked by the job
it leaves on the job Stream. Also here: the byte-exact picture of a session's Redis keys and of the snapshot store
that the fuzzers compare before and after a refused input.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

from devstack.procs import Proc
from devstack.stack import Stack
from services.common import keys

# How the services log an unhandled error (with its traceback): the project's own handlers
# (services.common.grpc_server, the gateway's connection), uvicorn for an HTTP request and grpc for a servicer error.
UNHANDLED = ("unhandled error", "Exception in ASGI application", "Unexpected [")
# Meta fields a Generate stream that ends without Finish or Fail rewrites by design (the tracker marks the open reply
# orphaned so that the next Open may take it over): not a change made by the refused message itself.
STREAM_END_FIELDS = frozenset({b"version", b"orphaned"})
# A session's event Stream and its bookkeeping, which refusals on a bound WebSocket append `error` events to.
EVENT_KEYS = (":events", ":event_seq", ":event_sizes", ":event_bytes")


@dataclass
class Target:
    ws_url: str
    http_url: str
    redis_url: str
    tracker_addr: str
    snapshot_addr: str
    workdir: Path
    procs: dict[str, Proc]

    @property
    def snapshot_dir(self) -> Path:
        return self.workdir / "snapshots"

    def dead(self) -> list[str]:
        return [name for name, proc in self.procs.items() if not proc.alive()]

    def redis(self) -> redis.Redis:
        return redis.Redis.from_url(self.redis_url)

    def unhandled_errors(self) -> dict[str, int]:
        """How many unhandled errors (logged with their traceback) each service has logged so far."""
        counts = {}
        for name, proc in self.procs.items():
            try:
                text = proc.log_path.read_text(errors="replace")
                counts[name] = sum(text.count(marker) for marker in UNHANDLED)
            except OSError:
                counts[name] = 0
        return counts


@contextlib.contextmanager
def running(workdir: Path, redis_url: str | None = None) -> Iterator[Target]:
    """Starts the tracker, the snapshot service and the gateway (and a Redis of its own unless `redis_url`)."""
    env = {
        # Snapshot jobs have no worker to answer them here: their documented 504 comes after this long.
        "HALOWEAVE_GATEWAY_JOB_TIMEOUT_S": "0.25",
        "HALOWEAVE_SNAPSHOT_MASTER_KEY": os.urandom(32).hex(),
        "HALOWEAVE_LOG_LEVEL": "WARNING",
    }
    stack = Stack(
        workdir,
        services=("tracker", "snapshot", "gateway"),
        redis_url_override=redis_url,
        redis_appendonly=False,
        env=env,
    )
    with stack:
        procs = {name: proc for name, proc in stack.procs.items() if name != "redis"}
        yield Target(
            ws_url=stack.ws_url,
            http_url=stack.gateway_url,
            redis_url=stack.redis_url,
            tracker_addr=stack.tracker_addr,
            snapshot_addr=stack.snapshot_addr,
            workdir=workdir,
            procs=procs,
        )


# ---- pictures of state ------------------------------------------------------------------------------------------


def session_keys(client: redis.Redis, session_id: str) -> list[bytes]:
    """Every key of a session: the tracker's (dictionary, settings, events) and the gateway's token hash."""
    prefix = keys.session_prefix(session_id)
    found: list[bytes] = list(client.scan_iter(match=_glob_escape(prefix) + ":*", count=1000))
    if client.exists(keys.auth_key(session_id)):
        found.append(keys.auth_key(session_id).encode())
    return sorted(found)


def dump_session(
    client: redis.Redis, session_id: str, skip: tuple[str, ...] = (), meta_skip: frozenset[bytes] = frozenset()
) -> dict[bytes, Any]:
    """The session's keys, each as its DUMP bytes (the meta hash field by field, less `meta_skip`).

    `skip` leaves out keys by suffix (e.g. `:events`, `:event_seq`, which the gateway appends refusals to).
    """
    picture: dict[bytes, Any] = {}
    for key in session_keys(client, session_id):
        text = key.decode()
        if any(text.endswith(suffix) for suffix in skip):
            continue
        if text.endswith(":meta") and meta_skip:
            fields: dict[bytes, bytes] = client.hgetall(key)  # type: ignore[assignment]
            picture[key] = {k: v for k, v in fields.items() if k not in meta_skip}
        else:
            picture[key] = client.dump(key)
    return picture


def differences(before: dict[bytes, Any], after: dict[bytes, Any]) -> list[str]:
    """The keys that differ between two pictures, as readable lines (empty when byte-identical)."""
    lines = []
    for key in sorted(set(before) | set(after)):
        if key not in after:
            lines.append(f"{key.decode()} was removed")
        elif key not in before:
            lines.append(f"{key.decode()} was created")
        elif before[key] != after[key]:
            if isinstance(before[key], dict):
                changed = sorted(
                    f.decode() for f in set(before[key]) | set(after[key]) if before[key].get(f) != after[key].get(f)
                )
                lines.append(f"{key.decode()} changed fields {', '.join(changed)}")
            else:
                lines.append(f"{key.decode()} changed")
    return lines


def tree(root: Path) -> dict[str, str]:
    """Every file under `root` with the sha256 of its bytes (directories as `dir`): a change anywhere shows."""
    picture: dict[str, str] = {}
    if not root.exists():
        return picture
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if path.is_dir():
            picture[rel] = "dir"
        else:
            try:
                picture[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
            except OSError:
                picture[rel] = "unreadable"
    return picture


def _glob_escape(text: str) -> str:
    return "".join(f"\\{c}" if c in "*?[]\\" else c for c in text)


def strict_json(text: str | bytes) -> Any:
    """JSON as browsers read it: NaN and Infinity are not JSON."""

    def refuse(constant: str) -> Any:
        raise ValueError(f"{constant} is not JSON")

    return json.loads(text, parse_constant=refuse)
