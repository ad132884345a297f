"""REST endpoints under /v1/sessions/{id}: export, settings, snapshots. Each checks the session's bearer token.

Errors are JSON `{"code", "message"}` with the same codes as WebSocket error frames. Each route declares its answers
(rest_models) so that the OpenAPI schema says what a client really gets.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Request
from fastapi.responses import JSONResponse
from haloweave.tracker.v1 import tracker_pb2

from services.common import keys, snapshot_ids
from services.common.errors import HaloWeaveError, InvalidArgument, NotFound
from services.gateway import auth, erase, jobs, protocol, settings_codec
from services.gateway.connection import Deps
from services.gateway.openai import api_keys, conversation
from services.gateway.rest_models import (
    Export,
    SessionErased,
    Settings,
    SettingsChange,
    SnapshotList,
    SnapshotRestored,
    SnapshotTaken,
    error_responses,
)

router = APIRouter(prefix="/v1/sessions/{session_id}", tags=["sessions"])

_STATUS = {
    protocol.UNAUTHORIZED: 401,
    protocol.UNKNOWN_SESSION: 404,
    protocol.INVALID_SETTINGS: 400,
    protocol.BAD_FRAME: 400,
    protocol.UNAVAILABLE: 503,
    "timeout": 504,
    protocol.INTERNAL: 500,
}


class ApiError(Exception):
    def __init__(self, code: str, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status or _STATUS.get(code, 500)


def api_error_response(error: ApiError) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if error.status == 401 else None
    return JSONResponse({"code": error.code, "message": error.message}, status_code=error.status, headers=headers)


# What every session route may answer besides its own result: no or a wrong token, an unknown session, a malformed
# request, a peer that failed or did not answer.
_REFUSALS = (401, 404, 422, 502, 503)


def _answers(model: type, *more: int) -> dict[int | str, dict[str, Any]]:
    return {200: {"model": model}, **error_responses(*sorted({*_REFUSALS, *more}))}


def _deps(request: Request) -> Deps:
    deps: Deps = request.app.state.deps
    return deps


async def authorised(session_id: str, request: Request, authorization: Annotated[str | None, Header()] = None) -> Deps:
    """The dependency every session route takes: `Authorization: Bearer <credential>`, the session's token or the
    API key that owns the session (sessions made through the OpenAI API have no token)."""
    deps = _deps(request)
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise ApiError(protocol.UNAUTHORIZED, "send Authorization: Bearer <session token or API key>")
    if api_keys.looks_like_key(token.strip()):
        verdict = await _key_verdict(deps, session_id, token.strip())
    else:
        verdict = await auth.check(deps.redis, session_id, token.strip())
    if verdict == "unknown_session":
        raise ApiError(protocol.UNKNOWN_SESSION, f"no session {session_id}")
    if verdict != "ok":
        raise ApiError(protocol.UNAUTHORIZED, "wrong token for this session")
    return deps


async def _key_verdict(deps: Deps, session_id: str, key: str) -> str:
    """As `auth.check`: "ok" when the key is valid and owns the session, "unknown_session" when there is no such
    session, else "unauthorized"."""
    key_id = await api_keys.verify(deps.redis, key)
    if key_id is not None and await conversation.owner(deps.redis, session_id) == key_id:
        return "ok"
    known = await deps.redis.exists(keys.auth_key(session_id), keys.openai_owner(session_id))
    return "unauthorized" if known else "unknown_session"


Authorised = Annotated[Deps, Depends(authorised)]


def _domain(error: HaloWeaveError, invalid_code: str = protocol.BAD_FRAME) -> ApiError:
    if isinstance(error, NotFound):
        return ApiError(protocol.UNKNOWN_SESSION, error.message)
    if isinstance(error, InvalidArgument):
        return ApiError(invalid_code, error.message)
    if error.code == "unavailable":
        return ApiError(protocol.UNAVAILABLE, error.message)
    return ApiError(error.code, error.message, 502)


def _entry(token: tracker_pb2.TokenEntry) -> dict[str, Any]:
    return {
        "position": token.position,
        "token": token.token,
        "token_id": token.token_id,
        "attention_score": token.attention_score,
        "turn_id": token.turn_id,
        "sentence_id": token.sentence_id,
        "role": token.role,
        "deleted": token.deleted,
    }


@router.get(
    "/export",
    summary="The full token dictionary (deleted tokens included) and the settings",
    response_model=None,
    responses=_answers(Export),
)
async def export(session_id: str, deps: Authorised) -> dict[str, Any]:
    try:
        state = await deps.peers.export(session_id)
    except HaloWeaveError as error:
        raise _domain(error) from None
    return {
        "session_id": state.session_id,
        "model": state.model or await deps.peers.served_model(),
        "tokenizer_fingerprint": state.tokenizer_fingerprint,
        "next_position": state.next_position,
        "settings": settings_codec.from_pb(state.settings),
        "tokens": [_entry(t) for t in state.tokens],
    }


@router.get("/settings", summary="The session's effective settings", response_model=None, responses=_answers(Settings))
async def get_settings(session_id: str, deps: Authorised) -> dict[str, Any]:
    try:
        return settings_codec.from_pb(await deps.peers.get_settings(session_id))
    except HaloWeaveError as error:
        raise _domain(error) from None


_SETTINGS_BODY = {
    "required": True,
    "content": {"application/json": {"schema": SettingsChange.model_json_schema(), "example": {"decay_rate": 0.01}}},
}


@router.put(
    "/settings",
    summary="Change some settings (only the given fields); returns the effective settings",
    response_model=None,
    responses=_answers(Settings, 400),
    openapi_extra={"requestBody": _SETTINGS_BODY},
)
async def put_settings(session_id: str, deps: Authorised, request: Request) -> dict[str, Any]:
    # The body is read here rather than by FastAPI, so that a body that is not a JSON object is refused like any
    # other bad settings (400 invalid_settings), with the same error body.
    try:
        settings = json.loads(await request.body())
    except (ValueError, RecursionError):
        raise ApiError(protocol.INVALID_SETTINGS, "the body must be a JSON object of settings") from None
    try:
        return settings_codec.from_pb(await deps.peers.update_settings(session_id, settings_codec.to_pb(settings)))
    except HaloWeaveError as error:
        raise _domain(error, protocol.INVALID_SETTINGS) from None


@router.get(
    "/snapshots", summary="The session's snapshots, newest first", response_model=None, responses=_answers(SnapshotList)
)
async def list_snapshots(session_id: str, deps: Authorised) -> dict[str, Any]:
    try:
        reply = await deps.peers.list_snapshots(session_id)
    except HaloWeaveError as error:
        raise _domain(error) from None
    return {
        "snapshots": [
            {
                "snapshot_id": s.snapshot_id,
                "tokens": s.tokens,
                "bytes": s.bytes,
                "model": s.model,
                "dtype": s.dtype,
                "created_at": s.created_at,
            }
            for s in reply.snapshots
        ]
    }


async def _run_job(deps: Deps, session_id: str, job_type: str, answer: str, **extra: str) -> dict[str, Any]:
    after = await jobs.last_event_id(deps.redis, session_id)
    try:
        job_id = await jobs.enqueue(deps.redis, job_type, session_id, **extra)
    except NotFound as error:  # being erased
        raise ApiError(protocol.UNKNOWN_SESSION, error.message) from None
    try:
        frame = await jobs.wait_for_job(deps.redis, session_id, job_id, after, {answer}, deps.config.job_timeout_s)
    except jobs.JobFailed as failure:
        status = 404 if failure.code == "not_found" else 409 if failure.code == "busy" else 422
        raise ApiError(failure.code, failure.message, status) from None
    except HaloWeaveError as error:
        raise ApiError("timeout", error.message) from None
    frame.pop("type", None)
    return frame


@router.post(
    "/snapshots",
    summary="Take a snapshot of the session's KV cache and dictionary; returns its id",
    response_model=None,
    responses=_answers(SnapshotTaken, 409, 504),
)
async def take_snapshot(session_id: str, deps: Authorised) -> dict[str, Any]:
    return await _run_job(deps, session_id, "snapshot", "snapshot_saved")


@router.post(
    "/snapshots/{snapshot_id}/restore",
    summary="Restore a snapshot: the session continues from it",
    response_model=None,
    responses=_answers(SnapshotRestored, 400, 409, 504),
)
async def restore_snapshot(session_id: str, snapshot_id: str, deps: Authorised) -> dict[str, Any]:
    # Only a well-formed id is passed on: nothing path-like ever reaches a job, a worker or the store.
    if not snapshot_ids.is_snapshot_id(snapshot_id):
        raise ApiError(protocol.BAD_FRAME, "malformed snapshot id (expected m<month>d<day>x<hour>x<minute>x<second>)")
    return await _run_job(deps, session_id, "restore", "snapshot_restored", snapshot_id=snapshot_id)


@router.delete(
    "",
    summary="Erase the session everywhere: dictionary, events, settings, token, caches on every worker, snapshots",
    response_model=None,
    responses=_answers(SessionErased),
)
async def delete_session(session_id: str, deps: Authorised) -> dict[str, Any]:
    # A reply running for it is cancelled first, and its WebSocket connections end with `session_deleted`
    # (services/gateway/erase.py). Workers that do not answer: 503 and the session as it was; a peer failing later
    # leaves the erase half done (503), and the same DELETE, which the token still opens, finishes it.
    try:
        return await erase.erase_session(deps, session_id)
    except HaloWeaveError as error:
        raise _domain(error) from None
