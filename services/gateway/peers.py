"""The gateway's gRPC clients: the tracker and the snapshot service, with their errors as domain errors.

Call sites never see grpc: a status becomes the matching `services.common.errors` exception, so the WebSocket and REST
layers map one error type to their own codes.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import TypeVar

import grpc
from haloweave.inference.v1 import inference_pb2, inference_pb2_grpc
from haloweave.snapshot.v1 import snapshot_pb2, snapshot_pb2_grpc
from haloweave.tracker.v1 import tracker_pb2, tracker_pb2_grpc

from services.common import errors, grpc_server

T = TypeVar("T")
# Inference.ForgetSession waits for a running job of the session to end on every worker (up to 30 s each there).
FORGET_TIMEOUT_S = 60.0


async def _call(what: str, call: Awaitable[T]) -> T:
    try:
        return await call
    except grpc.aio.AioRpcError as error:
        raise grpc_server.domain_error(error, what) from None


class Peers:
    """One channel per peer for the gateway's lifetime; calls are bounded by `timeout`."""

    def __init__(self, tracker_addr: str, snapshot_addr: str, inference_addr: str, timeout: float) -> None:
        self.timeout = timeout
        self._tracker_channel = grpc_server.channel(tracker_addr)
        self._snapshot_channel = grpc_server.channel(snapshot_addr)
        self._inference_channel = grpc_server.channel(inference_addr)
        self.tracker = tracker_pb2_grpc.TrackerStub(self._tracker_channel)
        self.snapshot = snapshot_pb2_grpc.SnapshotStub(self._snapshot_channel)
        self.inference = inference_pb2_grpc.InferenceStub(self._inference_channel)

    async def close(self) -> None:
        await self._tracker_channel.close()
        await self._snapshot_channel.close()
        await self._inference_channel.close()

    async def served_model(self) -> str:
        """The model the workers serve (empty when they do not answer)."""
        try:
            status = await _call("Status", self.inference.Status(inference_pb2.StatusRequest(), timeout=self.timeout))
        except errors.HaloWeaveError:
            return ""
        return status.model

    async def create_session(
        self, system_prompt: str | None = None, settings: tracker_pb2.Settings | None = None
    ) -> tracker_pb2.SessionInfo:
        """A new session: the default system prompt and settings unless given (the OpenAI API gives both)."""
        request = tracker_pb2.CreateSessionRequest(settings=settings, system_prompt=system_prompt)
        return await _call("CreateSession", self.tracker.CreateSession(request, timeout=self.timeout))

    async def get_session(self, session_id: str) -> tracker_pb2.SessionInfo:
        ref = tracker_pb2.SessionRef(session_id=session_id)
        return await _call("GetSession", self.tracker.GetSession(ref, timeout=self.timeout))

    async def append_user_message(self, session_id: str, text: str) -> tracker_pb2.AppendMessageResponse:
        return await self.append_message(session_id, "user", text)

    async def append_message(self, session_id: str, role: str, text: str) -> tracker_pb2.AppendMessageResponse:
        request = tracker_pb2.AppendMessageRequest(session_id=session_id, role=role, text=text)
        return await _call("AppendMessage", self.tracker.AppendMessage(request, timeout=self.timeout))

    async def get_settings(self, session_id: str) -> tracker_pb2.Settings:
        ref = tracker_pb2.SessionRef(session_id=session_id)
        return await _call("GetSettings", self.tracker.GetSettings(ref, timeout=self.timeout))

    async def update_settings(self, session_id: str, settings: tracker_pb2.Settings) -> tracker_pb2.Settings:
        request = tracker_pb2.UpdateSettingsRequest(session_id=session_id, settings=settings)
        return await _call("UpdateSettings", self.tracker.UpdateSettings(request, timeout=self.timeout))

    async def cancel(self, session_id: str) -> None:
        ref = tracker_pb2.SessionRef(session_id=session_id)
        await _call("Cancel", self.tracker.Cancel(ref, timeout=self.timeout))

    async def export(self, session_id: str) -> tracker_pb2.ExportResponse:
        ref = tracker_pb2.SessionRef(session_id=session_id)
        return await _call("Export", self.tracker.Export(ref, timeout=self.timeout))

    async def list_snapshots(self, session_id: str) -> snapshot_pb2.ListResponse:
        request = snapshot_pb2.ListRequest(session_id=session_id)
        return await _call("List", self.snapshot.List(request, timeout=self.timeout))

    async def delete_snapshot(self, session_id: str, snapshot_id: str) -> None:
        request = snapshot_pb2.DeleteRequest(session_id=session_id, snapshot_id=snapshot_id)
        await _call("Delete", self.snapshot.Delete(request, timeout=self.timeout))

    async def forget_session(self, session_id: str) -> inference_pb2.ForgetSessionResponse:
        """Every worker lets go of the session; bounded by the workers' wait for its running job, not `timeout`."""
        request = inference_pb2.ForgetSessionRequest(session_id=session_id)
        return await _call("ForgetSession", self.inference.ForgetSession(request, timeout=FORGET_TIMEOUT_S))

    async def delete_session(self, session_id: str) -> tracker_pb2.SessionDeleted:
        ref = tracker_pb2.SessionRef(session_id=session_id)
        return await _call("DeleteSession", self.tracker.DeleteSession(ref, timeout=self.timeout))
