"""The driver's control plane over gRPC: Inference.Status and ForgetSession (protobuf in, the driver, protobuf out)."""

from __future__ import annotations

from typing import Any, Protocol

import grpc
from haloweave.inference.v1 import inference_pb2, inference_pb2_grpc

from services.common.errors import InvalidArgument
from services.common.grpc_server import handle_errors
from services.inference.forget import Forgotten


class WorkerView(Protocol):
    def engine_info(self) -> dict[str, str]: ...

    def workers(self) -> list[dict[str, Any]]: ...

    async def forget(self, session_id: str) -> Forgotten: ...


class InferenceServicer(inference_pb2_grpc.InferenceServicer):
    def __init__(self, view: WorkerView) -> None:
        self.view = view

    @handle_errors
    async def Status(
        self, request: inference_pb2.StatusRequest, context: grpc.aio.ServicerContext
    ) -> inference_pb2.StatusResponse:
        engine = self.view.engine_info()
        return inference_pb2.StatusResponse(
            model=engine.get("model", ""),
            device=engine.get("device", ""),
            dtype=engine.get("dtype", ""),
            tokenizer_fingerprint=engine.get("tokenizer_fingerprint", ""),
            workers=[
                inference_pb2.WorkerStatus(
                    worker_id=w["worker_id"],
                    alive=w["alive"],
                    sessions=w["sessions"],
                    kv_bytes=w["kv_bytes"],
                    jobs_done=w["jobs_done"],
                    pid=w["pid"],
                )
                for w in self.view.workers()
            ],
        )

    @handle_errors
    async def ForgetSession(
        self, request: inference_pb2.ForgetSessionRequest, context: grpc.aio.ServicerContext
    ) -> inference_pb2.ForgetSessionResponse:
        if not request.session_id:
            raise InvalidArgument("session_id is empty")
        forgotten = await self.view.forget(request.session_id)
        return inference_pb2.ForgetSessionResponse(
            workers=[inference_pb2.WorkerForgot(**w.to_dict()) for w in forgotten.workers],
            jobs_removed=forgotten.jobs_removed,
            keys_removed=forgotten.keys_removed,
        )
