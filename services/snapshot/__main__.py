"""`python -m services.snapshot`: serve the Snapshot gRPC API (with health) and /metrics until SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys

from haloweave.snapshot.v1 import snapshot_pb2_grpc

from services.common import lifecycle, logs
from services.common.config import ConfigError
from services.common.errors import HaloWeaveError
from services.common.grpc_server import Server
from services.snapshot.backends import open_backend
from services.snapshot.config import SnapshotConfig
from services.snapshot.crypto import MasterKey
from services.snapshot.servicer import SnapshotServicer
from services.snapshot.store import SnapshotStore

log = logging.getLogger("services.snapshot")


def build_store(cfg: SnapshotConfig) -> SnapshotStore:
    try:
        backend = open_backend(cfg.url)
    except ValueError as error:
        raise ConfigError(f"HALOWEAVE_SNAPSHOT_URL: {error}") from None
    except HaloWeaveError as error:  # the object store refused or could not be reached
        raise ConfigError(f"HALOWEAVE_SNAPSHOT_URL: {error.message}") from None
    return SnapshotStore(backend, MasterKey(cfg.master_key), gc_grace_s=cfg.gc_grace_s)


async def collect_garbage_forever(store: SnapshotStore, interval_s: float) -> None:
    """Orphans of crashed saves are collected at start-up, then every `interval_s`."""
    while True:
        try:
            await asyncio.to_thread(store.collect_garbage)
        except HaloWeaveError as error:
            log.warning("garbage collection failed: %s", error.message)
        if interval_s <= 0:
            return
        await asyncio.sleep(interval_s)


async def serve(cfg: SnapshotConfig) -> None:
    store = build_store(cfg)
    server = Server(cfg.listen)
    server.add(
        snapshot_pb2_grpc.add_SnapshotServicer_to_server, SnapshotServicer(store), "haloweave.snapshot.v1.Snapshot"
    )
    lifecycle.start_metrics(cfg.metrics_port, cfg.listen)
    stop = lifecycle.stop_on_signals()
    gc_task = asyncio.create_task(collect_garbage_forever(store, cfg.gc_interval_s))
    await server.start()
    log.info(
        "snapshot service ready on %s, store %s, master key %s (metrics port %s)",
        cfg.listen,
        store.backend.describe(),
        store.master.key_id if store.master else "-",
        cfg.metrics_port or "off",
    )
    await stop.wait()
    log.info("stopping")
    gc_task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await gc_task
    await server.stop(grace=10.0)


def main() -> int:
    logs.setup("snapshot")
    cfg = SnapshotConfig.from_env()
    asyncio.run(serve(cfg))
    return 0


if __name__ == "__main__":
    sys.exit(main())
