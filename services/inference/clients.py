"""Thin gRPC clients for the tracker and the snapshot service, speaking protobuf messages and domain errors.

A failed call becomes the matching `services.common.errors` class, so the job logic decides what to tell the client
without knowing grpc.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterable
from typing import Any

import grpc
from haloweave.snapshot.v1 import snapshot_pb2, snapshot_pb2_grpc
from haloweave.tracker.v1 import tracker_pb2, tracker_pb2_grpc

from services.common import errors, grpc_server
from services.common.grpc_server import domain_error

# Unary calls that should answer at once.
CALL_TIMEOUT_S = 30.0
# Each message of a Generate stream is answered within this (a Frame takes milliseconds, an Open of a long context a
# fraction of a second): a tracker that stalls longer counts as gone, and the reply is reopened (`batcher`).
STREAM_MESSAGE_TIMEOUT_S = 10.0


class GenerateStream:
    """One reply's bidirectional stream: `send` a request, `recv` the answer, each within its deadline."""

    def __init__(self, call: Any, timeout_s: float = STREAM_MESSAGE_TIMEOUT_S) -> None:
        self._call = call
        self.timeout_s = timeout_s

    async def send(self, request: tracker_pb2.GenerateRequest) -> None:
        try:
            await asyncio.wait_for(self._call.write(request), self.timeout_s)
        except TimeoutError:
            raise errors.Unavailable(f"tracker took no message for {self.timeout_s:.0f} s") from None
        except grpc.aio.AioRpcError as error:
            raise domain_error(error, "tracker") from None
        except (grpc.aio.UsageError, asyncio.InvalidStateError):  # the call has ended (the tracker went away)
            raise errors.Unavailable("tracker closed the generation stream") from None

    async def recv(self) -> tracker_pb2.GenerateResponse:
        try:
            reply = await asyncio.wait_for(self._call.read(), self.timeout_s)
        except TimeoutError:
            raise errors.Unavailable(f"tracker did not answer within {self.timeout_s:.0f} s") from None
        except grpc.aio.AioRpcError as error:
            raise domain_error(error, "tracker") from None
        if reply is grpc.aio.EOF:
            raise errors.Unavailable("tracker ended the generation stream early")
        return reply  # type: ignore[no-any-return]

    async def close(self) -> None:
        with contextlib.suppress(grpc.aio.AioRpcError, grpc.aio.UsageError):
            await self._call.done_writing()
        self._call.cancel()


class TrackerClient:
    def __init__(self, address: str, stream_timeout_s: float = STREAM_MESSAGE_TIMEOUT_S) -> None:
        self.address = address
        self.stream_timeout_s = stream_timeout_s
        self.channel = grpc_server.channel(address)
        self.stub = tracker_pb2_grpc.TrackerStub(self.channel)

    async def close(self) -> None:
        await self.channel.close()

    async def _unary(self, method: Any, request: Any) -> Any:
        try:
            return await method(request, timeout=CALL_TIMEOUT_S)
        except grpc.aio.AioRpcError as error:
            raise domain_error(error, "tracker") from None

    def generate(self) -> GenerateStream:
        return GenerateStream(self.stub.Generate(), self.stream_timeout_s)

    async def get_context(self, session_id: str) -> tracker_pb2.Context:
        reply: tracker_pb2.Context = await self._unary(
            self.stub.GetContext, tracker_pb2.SessionRef(session_id=session_id)
        )
        return reply

    async def export(self, session_id: str) -> tracker_pb2.ExportResponse:
        reply: tracker_pb2.ExportResponse = await self._unary(
            self.stub.Export, tracker_pb2.SessionRef(session_id=session_id)
        )
        return reply

    async def cancel(self, session_id: str) -> None:
        await self._unary(self.stub.Cancel, tracker_pb2.SessionRef(session_id=session_id))

    async def restore_state(self, session_id: str, state: tracker_pb2.ExportResponse) -> tracker_pb2.SessionInfo:
        request = tracker_pb2.RestoreStateRequest(session_id=session_id, state=state)
        reply: tracker_pb2.SessionInfo = await self._unary(self.stub.RestoreState, request)
        return reply


class SnapshotClient:
    def __init__(self, address: str) -> None:
        self.address = address
        self.channel = grpc_server.channel(address)
        self.stub = snapshot_pb2_grpc.SnapshotStub(self.channel)

    async def close(self) -> None:
        await self.channel.close()

    async def save(
        self, header: snapshot_pb2.SnapshotHeader, chunks: Iterable[snapshot_pb2.TensorChunk]
    ) -> snapshot_pb2.SnapshotInfo:
        async def requests() -> AsyncIterator[snapshot_pb2.SaveRequest]:
            yield snapshot_pb2.SaveRequest(header=header)
            for chunk in chunks:
                yield snapshot_pb2.SaveRequest(chunk=chunk)

        try:
            reply: snapshot_pb2.SnapshotInfo = await self.stub.Save(requests())
        except grpc.aio.AioRpcError as error:
            raise domain_error(error, "snapshot") from None
        return reply

    async def load(
        self, request: snapshot_pb2.LoadRequest
    ) -> tuple[snapshot_pb2.SnapshotHeader, list[snapshot_pb2.TensorChunk]]:
        header: snapshot_pb2.SnapshotHeader | None = None
        chunks: list[snapshot_pb2.TensorChunk] = []
        try:
            async for reply in self.stub.Load(request):
                if reply.HasField("header"):
                    header = reply.header
                else:
                    chunks.append(reply.chunk)
        except grpc.aio.AioRpcError as error:
            raise domain_error(error, "snapshot") from None
        if header is None:
            raise errors.DataLoss("snapshot: the load stream carried no header")
        return header, chunks

    async def delete(self, session_id: str, snapshot_id: str) -> None:
        try:
            await self.stub.Delete(
                snapshot_pb2.DeleteRequest(session_id=session_id, snapshot_id=snapshot_id), timeout=CALL_TIMEOUT_S
            )
        except grpc.aio.AioRpcError as error:
            raise domain_error(error, "snapshot") from None
