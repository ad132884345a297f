"""The Save handler in-process, where the moment of a client's cancel can be chosen: a cancel that lands while the
folder is being claimed still leaves nothing behind (over real gRPC that window is a few microseconds wide, and a
loaded machine hit it)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator

from haloweave.snapshot.v1 import snapshot_pb2

from services.snapshot.backends.file import FileBackend
from services.snapshot.saving import SaveSession
from services.snapshot.servicer import SnapshotServicer
from services.snapshot.store import SnapshotStore
from services.snapshot.tensors import Header
from tests.snapshot.support import chunk_requests, header, make_cache


class SlowClaim(SnapshotStore):
    """Claims the folder, then holds the answer until told to go on."""

    def __init__(self, store: SnapshotStore) -> None:
        super().__init__(store.backend, store.master)
        self.claimed = threading.Event()
        self.go_on = threading.Event()

    def begin(self, header: Header) -> SaveSession:
        session = super().begin(header)
        self.claimed.set()
        assert self.go_on.wait(30)
        return session


async def requests() -> AsyncIterator[snapshot_pb2.SaveRequest]:
    for request in chunk_requests(header(session_id="s-cancel"), make_cache()):
        yield request


def folders(store: SnapshotStore) -> list[str]:
    assert isinstance(store.backend, FileBackend)
    root = store.backend.root
    return sorted(p.name for p in root.iterdir()) if root.exists() else []


def test_a_cancel_while_the_folder_is_claimed_removes_the_folder(file_store: SnapshotStore) -> None:
    store = SlowClaim(file_store)

    async def scenario() -> None:
        save = asyncio.create_task(SnapshotServicer(store)._save(requests()))
        assert await asyncio.to_thread(store.claimed.wait, 30)
        assert len(folders(store)) == 1
        save.cancel()
        await asyncio.gather(save, return_exceptions=True)
        assert save.cancelled()
        store.go_on.set()
        for _ in range(300):
            if not folders(store):
                return
            await asyncio.sleep(0.01)

    asyncio.run(scenario())
    assert folders(store) == []
    assert store._active == set()
