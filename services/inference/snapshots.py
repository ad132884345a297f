"""Saving and restoring a session's KV cache through the snapshot service (docs/architecture.md "Snapshots").

A user snapshot holds the tracker's exported dictionary and a cache that is exactly its active tokens (plus, with
recall, the cold tier of pruned ones), so a restore continues the conversation as if it had never been saved. An
offload snapshot (the memory budget letting a session go) holds the cache as it was, cold tier included; on the way
back it is only re-installed and then synced with the tracker like any cache.
"""

from __future__ import annotations

from google.protobuf.message import DecodeError
from haloweave.snapshot.v1 import snapshot_pb2
from haloweave.tracker.v1 import tracker_pb2

from services.common import tensor_chunks
from services.common.errors import DataLoss, FailedPrecondition
from services.common.session_settings import SessionSettings
from services.inference import snapshot_io
from services.inference.clients import SnapshotClient, TrackerClient
from services.inference.engine import Engine, SessionCache
from services.inference.engine_thread import EngineThread

CACHE_IMPL = "dynamic"
DEFAULT_OBFUSCATION = ("rotate_heads", "xor_mask", "remap_ids")


def active(state: tracker_pb2.ExportResponse) -> tuple[list[int], list[int]]:
    tokens = sorted((t for t in state.tokens if not t.deleted), key=lambda t: t.position)
    return [int(t.position) for t in tokens], [int(t.token_id) for t in tokens]


def deleted(state: tracker_pb2.ExportResponse) -> dict[int, int]:
    return {int(t.position): int(t.token_id) for t in state.tokens if t.deleted}


class Snapshots:
    def __init__(
        self,
        engine: Engine,
        tracker: TrackerClient,
        client: SnapshotClient,
        thread: EngineThread,
        obfuscation: tuple[str, ...] = DEFAULT_OBFUSCATION,
    ) -> None:
        self.engine = engine
        self.thread = thread
        self.tracker = tracker
        self.client = client
        self.obfuscation = obfuscation

    def _header(self, session_id: str, state: tracker_pb2.ExportResponse) -> snapshot_pb2.SnapshotHeader:
        return snapshot_pb2.SnapshotHeader(
            session_id=session_id,
            model=self.engine.model_name,
            dtype=self.engine.dtype,
            cache_impl=CACHE_IMPL,
            tokenizer_fingerprint=self.engine.tokenizer_fingerprint,
            num_layers=self.engine.num_layers,
            tracker_state=state.SerializeToString(),
            obfuscation=list(self.obfuscation),
        )

    def _load_request(self, session_id: str, snapshot_id: str) -> snapshot_pb2.LoadRequest:
        return snapshot_pb2.LoadRequest(
            session_id=session_id,
            snapshot_id=snapshot_id,
            model=self.engine.model_name,
            dtype=self.engine.dtype,
            tokenizer_fingerprint=self.engine.tokenizer_fingerprint,
        )

    async def save(self, session_id: str, cache: SessionCache) -> tuple[snapshot_pb2.SnapshotInfo, int]:
        """A user snapshot: brings the cache to exactly the tracker's active tokens, then saves both.
        Returns the snapshot's info and its token count."""
        state = await self.tracker.export(session_id)
        positions, token_ids = active(state)
        await self.thread.run(
            self._settle, cache, positions, token_ids, SessionSettings.from_json(state.settings.json).recall
        )
        arrays = await self.thread.run(self.engine.export_cache, cache)
        info = await self.client.save(self._header(session_id, state), tensor_chunks.to_chunks(arrays))
        return info, len(positions)

    def _settle(self, cache: SessionCache, positions: list[int], token_ids: list[int], recall: bool) -> None:
        plan = cache.sync_plan(positions, token_ids)
        if plan is None:
            self.engine.rebuild(cache, token_ids, positions)
            return
        evict, suffix_positions, suffix_ids = plan
        self.engine.evict(cache, evict, cold=recall)
        if suffix_ids:
            self.engine.prefill(cache, suffix_ids, suffix_positions, capture=None)

    async def restore(self, session_id: str, snapshot_id: str) -> tuple[SessionCache, int]:
        """A user restore: the cache is built and checked before the tracker's dictionary is replaced, so a refused
        snapshot changes nothing. Returns the cache and the active token count."""
        header, arrays = await self._load(session_id, snapshot_id)
        state = tracker_pb2.ExportResponse()
        try:
            state.ParseFromString(header.tracker_state)
        except DecodeError:
            raise DataLoss(f"snapshot {snapshot_id}: its tracker state is unreadable") from None
        cache = await self._import(snapshot_id, arrays)
        positions, token_ids = active(state)
        if cache.positions != positions or cache.token_ids != token_ids:
            raise DataLoss(f"snapshot {snapshot_id}: the KV cache does not match the saved dictionary")
        gone = deleted(state)
        cold = cache.cold.all()
        if cold is not None and any(gone.get(p) != t for p, t in zip(cold.positions, cold.token_ids, strict=True)):
            raise DataLoss(f"snapshot {snapshot_id}: its cold tier holds tokens the saved dictionary did not prune")
        await self.tracker.restore_state(session_id, state)
        return cache, len(positions)

    async def _load(self, session_id: str, snapshot_id: str) -> tuple[snapshot_pb2.SnapshotHeader, dict]:
        header, chunks = await self.client.load(self._load_request(session_id, snapshot_id))
        if header.session_id and header.session_id != session_id:
            raise FailedPrecondition(f"snapshot {snapshot_id} belongs to another session")
        assembler = snapshot_io.Assembler()
        for chunk in chunks:
            assembler.add(chunk)
        return header, assembler.arrays()

    async def _import(self, snapshot_id: str, arrays: dict) -> SessionCache:
        try:
            return await self.thread.run(self.engine.import_cache, arrays)
        except ValueError as error:
            raise DataLoss(f"snapshot {snapshot_id}: {error}") from None

    async def offload(self, session_id: str, cache: SessionCache) -> str:
        """Saves the cache as it is (memory pressure); returns the snapshot id to bring it back with."""
        state = await self.tracker.export(session_id)
        arrays = await self.thread.run(self.engine.export_cache, cache)
        info = await self.client.save(self._header(session_id, state), tensor_chunks.to_chunks(arrays))
        return info.snapshot_id

    async def bring_back(self, session_id: str, snapshot_id: str) -> SessionCache:
        """Re-installs an offloaded cache and deletes its snapshot (it was never the user's)."""
        _, arrays = await self._load(session_id, snapshot_id)
        cache = await self._import(snapshot_id, arrays)
        await self.client.delete(session_id, snapshot_id)
        return cache
