"""The Snapshot gRPC API: protobuf in, a store call, protobuf out.

Store work (disk, S3, hashing, encryption) runs in worker threads so the event loop keeps answering health checks and
other streams. Wrong owner is PERMISSION_DENIED: snapshot ids are timestamps, so hiding their existence would buy
nothing, and a clear answer helps the caller.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator

import grpc
from haloweave.snapshot.v1 import snapshot_pb2, snapshot_pb2_grpc

from services.common.errors import InvalidArgument
from services.common.grpc_server import handle_errors, handle_stream_errors
from services.common.tensor_chunks import Assembler, tensor_chunks
from services.snapshot import metrics
from services.snapshot.saving import SaveSession
from services.snapshot.store import SnapshotStore
from services.snapshot.tensors import Header, Info, Loaded, numpy_dtype

# Bytes of tensor data per Load message. Measured here: protobuf building and serialising messages of several MiB is
# many times slower per byte than at a few hundred KiB (large allocations), so smaller messages stream faster.
CHUNK_BYTES = 512 * 1024


def header_from_pb(pb: snapshot_pb2.SnapshotHeader) -> Header:
    return Header(
        session_id=pb.session_id,
        model=pb.model,
        dtype=pb.dtype,
        cache_impl=pb.cache_impl,
        tokenizer_fingerprint=pb.tokenizer_fingerprint,
        num_layers=pb.num_layers,
        tracker_state=pb.tracker_state,
        obfuscation=list(pb.obfuscation),
    )


def header_to_pb(header: Header) -> snapshot_pb2.SnapshotHeader:
    return snapshot_pb2.SnapshotHeader(
        session_id=header.session_id,
        model=header.model,
        dtype=header.dtype,
        cache_impl=header.cache_impl,
        tokenizer_fingerprint=header.tokenizer_fingerprint,
        num_layers=header.num_layers,
        tracker_state=header.tracker_state,
        obfuscation=header.obfuscation,
    )


def info_to_pb(info: Info) -> snapshot_pb2.SnapshotInfo:
    return snapshot_pb2.SnapshotInfo(
        snapshot_id=info.snapshot_id,
        session_id=info.session_id,
        model=info.model,
        dtype=info.dtype,
        tokens=info.tokens,
        bytes=info.bytes,
        created_at=info.created_at,
    )


def load_stream(loaded: Loaded, chunk_bytes: int = CHUNK_BYTES) -> Iterator[snapshot_pb2.LoadResponse]:
    """The header, then every tensor in chunks; dtype and shape ride on each tensor's first chunk."""
    yield snapshot_pb2.LoadResponse(header=header_to_pb(loaded.header))
    for tensor in loaded.tensors:
        for chunk in tensor_chunks(tensor.name, tensor.array, chunk_bytes, dtype=tensor.dtype):
            yield snapshot_pb2.LoadResponse(chunk=chunk)


def _abort_claimed(claiming: asyncio.Future[SaveSession]) -> None:
    if not claiming.cancelled() and claiming.exception() is None:
        claiming.result().abort()


class SnapshotServicer(snapshot_pb2_grpc.SnapshotServicer):
    def __init__(self, store: SnapshotStore) -> None:
        self.store = store
        self.backend = store.backend.kind

    @handle_errors
    async def Save(
        self, request_iterator: AsyncIterator[snapshot_pb2.SaveRequest], context: grpc.aio.ServicerContext
    ) -> snapshot_pb2.SnapshotInfo:
        started = time.perf_counter()
        try:
            info = await self._save(request_iterator)
        except BaseException:
            metrics.FAILURES.labels("save").inc()
            raise
        metrics.BYTES.labels("save").inc(info.bytes)
        metrics.DURATION.labels("save", self.backend).observe(time.perf_counter() - started)
        return info_to_pb(info)

    async def _save(self, requests: AsyncIterator[snapshot_pb2.SaveRequest]) -> Info:
        first = await anext(requests, None)
        if first is None or not first.HasField("header"):
            raise InvalidArgument("a Save stream starts with its header")
        session = await self._begin(header_from_pb(first.header))
        assembler = Assembler(InvalidArgument, numpy_dtype)
        try:
            async for request in requests:
                if not request.HasField("chunk"):
                    raise InvalidArgument("a Save stream has one header, then only tensor chunks")
                c = request.chunk
                complete = assembler.feed(c.name, c.dtype, c.shape, c.data, c.last)
                if complete is not None:
                    await asyncio.to_thread(session.add, complete.name, complete.dtype, complete.shape, complete.data)
            assembler.close()
            return await asyncio.to_thread(session.finish)
        except BaseException:
            # Cancelled, refused or crashed: remove what was written (synchronously: a cancelled task cannot await).
            session.abort()
            raise

    async def _begin(self, header: Header) -> SaveSession:
        """Claims the save's folder in a thread. A cancel that arrives while the claim is under way (or after it is
        done but before this coroutine resumes) would lose the session, and its claimed folder with it; so the claim
        runs shielded, and a cancelled caller leaves the session to be aborted as soon as the claim ends."""
        claiming = asyncio.ensure_future(asyncio.to_thread(self.store.begin, header))
        try:
            return await asyncio.shield(claiming)
        except asyncio.CancelledError:
            claiming.add_done_callback(_abort_claimed)
            raise

    @handle_stream_errors
    async def Load(
        self, request: snapshot_pb2.LoadRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[snapshot_pb2.LoadResponse]:
        started = time.perf_counter()
        try:
            # Everything is verified and decrypted before the first message: a bad snapshot sends nothing.
            loaded = await asyncio.to_thread(
                self.store.load,
                request.session_id,
                request.snapshot_id,
                request.model,
                request.dtype,
                request.tokenizer_fingerprint,
            )
            for response in load_stream(loaded):
                yield response
        except BaseException:
            metrics.FAILURES.labels("load").inc()
            raise
        metrics.BYTES.labels("load").inc(sum(t.array.nbytes for t in loaded.tensors))
        metrics.DURATION.labels("load", self.backend).observe(time.perf_counter() - started)

    @handle_errors
    async def List(
        self, request: snapshot_pb2.ListRequest, context: grpc.aio.ServicerContext
    ) -> snapshot_pb2.ListResponse:
        started = time.perf_counter()
        try:
            infos = await asyncio.to_thread(self.store.list_session, request.session_id)
        except BaseException:
            metrics.FAILURES.labels("list").inc()
            raise
        metrics.DURATION.labels("list", self.backend).observe(time.perf_counter() - started)
        return snapshot_pb2.ListResponse(snapshots=[info_to_pb(info) for info in infos])

    @handle_errors
    async def Delete(
        self, request: snapshot_pb2.DeleteRequest, context: grpc.aio.ServicerContext
    ) -> snapshot_pb2.DeleteResponse:
        started = time.perf_counter()
        try:
            await asyncio.to_thread(self.store.delete, request.session_id, request.snapshot_id)
        except BaseException:
            metrics.FAILURES.labels("delete").inc()
            raise
        metrics.DURATION.labels("delete", self.backend).observe(time.perf_counter() - started)
        return snapshot_pb2.DeleteResponse()
