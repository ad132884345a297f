"""`POST /v1/chat/completions` and `GET /v1/models`: OpenAI's chat-completions API over the gateway's sessions.

One request is one reply of one session: the conversation it continues (services/gateway/openai/conversation.py)
or a new session built from its messages. The reply runs like a WebSocket chat's (a `generate` job on the job
Stream, its events read off the session Stream by the relay's reader) and is returned whole, or streamed as
server-sent events in OpenAI's chunk format. Refusals use OpenAI's error body (errors.py); everything a request
could be refused for is checked before any session changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import AsyncGenerator, Coroutine
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse
from haloweave.tracker.v1 import tracker_pb2
from redis.exceptions import RedisError

from services.common.errors import HaloWeaveError, NotFound
from services.gateway import jobs, settings_codec
from services.gateway.connection import Deps
from services.gateway.openai import api_keys, conversation
from services.gateway.openai.conversation import Turn
from services.gateway.openai.errors import OpenAIError, bad_request, from_domain, responses, translate
from services.gateway.openai.models import ChatCompletion, ChatCompletionRequest, ModelList, parse_request
from services.gateway.openai.params import settings_for
from services.gateway.openai.reply import Delta, Outcome, ReplyFailed, follow

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1", tags=["openai"])

# The largest body read; a longer one is refused (413) without being read further.
MAX_BODY_BYTES = 4 * 1024 * 1024
OWNED_BY = "haloweave"


def _deps(request: Request) -> Deps:
    deps: Deps = request.app.state.deps
    return deps


async def _key_id(request: Request) -> str:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise OpenAIError(401, "send Authorization: Bearer <API key>", "missing_api_key")
    with translate():
        key_id = await api_keys.verify(_deps(request).redis, token.strip())
    if key_id is None:
        raise OpenAIError(401, "incorrect API key provided", "invalid_api_key")
    return key_id


async def _served_model(deps: Deps) -> str:
    model = await deps.peers.served_model()
    if not model:
        raise OpenAIError(503, "no inference worker answers; retry shortly", "unavailable")
    return model


@router.get(
    "/models",
    summary="The model this deployment serves (OpenAI format)",
    response_model=None,
    responses={200: {"model": ModelList}, **responses(401, 503)},
)
async def list_models(request: Request) -> dict[str, Any]:
    await _key_id(request)
    model = await _served_model(_deps(request))
    return {"object": "list", "data": [{"id": model, "object": "model", "created": 0, "owned_by": OWNED_BY}]}


def _inline(schema: dict[str, Any]) -> dict[str, Any]:
    """A model's JSON schema with its `$defs` put in place: inside the OpenAPI document a `#/$defs/...` reference
    would point at the document's root, where there are none. (These models are not recursive.)"""
    defs = schema.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref", "")
            if ref.startswith("#/$defs/"):
                return resolve(defs[ref.removeprefix("#/$defs/")])
            return {k: resolve(v) for k, v in node.items()}
        if isinstance(node, list):
            return [resolve(v) for v in node]
        return node

    resolved: dict[str, Any] = resolve(schema)
    return resolved


_BODY = {
    "required": True,
    "content": {"application/json": {"schema": _inline(ChatCompletionRequest.model_json_schema())}},
}


@router.post(
    "/chat/completions",
    summary="A reply to a conversation (OpenAI chat completions; `stream: true` for server-sent events)",
    response_model=None,
    responses={
        200: {
            "description": "The reply; with `stream: true` a `text/event-stream` of `chat.completion.chunk` objects",
            "content": {
                "application/json": {"schema": _inline(ChatCompletion.model_json_schema())},
                "text/event-stream": {"schema": {"type": "string"}},
            },
        },
        **responses(400, 401, 404, 409, 413, 502, 503, 504),
    },
    openapi_extra={"requestBody": _BODY},
)
async def chat_completions(request: Request) -> Any:
    deps = _deps(request)
    key_id = await _key_id(request)
    body = await _read_body(request)
    chat = parse_request(body)
    turns = _turns(chat, deps.config.max_message_chars)
    changes = settings_for(chat)
    with translate():
        settings = settings_codec.to_pb(changes)  # every value checked before anything changes
    model = await _served_model(deps)
    if chat.model != model:
        why = f"model {chat.model!r} does not exist; this deployment serves {model!r}"
        raise OpenAIError(404, why, "model_not_found", "model")
    with translate():
        reply = await _start(deps, key_id, chat, turns, settings)
    completion = _Completion(f"chatcmpl-{uuid.uuid4().hex}", int(time.time()), model)
    if chat.stream:
        return StreamingResponse(
            _stream(deps, reply, completion, chat),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
    outcome = None
    try:
        async with contextlib.aclosing(reply.deltas) as deltas:
            async for delta in deltas:
                outcome = delta.outcome or outcome
    except (ReplyFailed, HaloWeaveError, RedisError) as error:
        await reply.failed(deps)
        raise _failure(error) from None
    assert outcome is not None
    with translate():
        await reply.ended(deps, outcome)
    return JSONResponse(completion.whole(outcome, reply))


async def _read_body(request: Request) -> bytes:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise OpenAIError(413, f"the body is over {MAX_BODY_BYTES} bytes", "request_too_large")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise OpenAIError(413, f"the body is over {MAX_BODY_BYTES} bytes", "request_too_large")
        chunks.append(chunk)
    return b"".join(chunks)


def _turns(chat: ChatCompletionRequest, max_chars: int) -> list[Turn]:
    turns: list[Turn] = [(str(m.role), m.text()) for m in chat.messages]
    for i, (role, text) in enumerate(turns):
        param = f"messages.{i}.content"
        if len(text) > max_chars:
            raise OpenAIError(413, f"{param}: over {max_chars} characters", "message_too_large", param)
        if not text.strip() and not (i == 0 and role == "system"):
            raise bad_request(f"{param}: empty", param)
        if any(0xD800 <= ord(c) <= 0xDFFF for c in text):
            raise bad_request(f"{param}: not valid Unicode (a lone surrogate)", param)
    if turns[-1][0] != "user":
        last = f"messages.{len(turns) - 1}.role"
        raise bad_request("the last message must be a user message (the one to reply to)", last)
    return turns


@dataclass(slots=True)
class _Reply:
    key_id: str
    session_id: str
    continued: bool
    history: list[Turn]  # what the session will hold once the reply is added (the request's messages)
    previous: list[Turn] | None  # the history it continued, when it did
    deltas: AsyncGenerator[Delta, None]
    new_tokens: int  # the tokens this request appended (a continued session: its new message)

    async def ended(self, deps: Deps, outcome: Outcome) -> None:
        """The session's history now ends with the reply as returned; unless the reply was cut short by a cancel
        (its session being erased): then it continues nothing, and nothing of it is written again."""
        if outcome.cancelled:
            await self.failed(deps)
            return
        history = [*self.history, ("assistant", outcome.text)]
        await conversation.record(deps.redis, self.key_id, self.session_id, history, self.previous)

    async def failed(self, deps: Deps) -> None:
        with contextlib.suppress(RedisError):
            await conversation.release(deps.redis, self.key_id, self.session_id, self.previous)


async def _start(
    deps: Deps, key_id: str, chat: ChatCompletionRequest, turns: list[Turn], settings: tracker_pb2.Settings
) -> _Reply:
    """Finds or builds the session, appends the new message and enqueues the reply's job."""
    redis, peers = deps.redis, deps.peers
    history = turns[:-1]
    session_id = await _continued(deps, key_id, chat.halo.session_id, history)
    if session_id is not None:
        try:
            await peers.update_settings(session_id, settings)
            after = await jobs.last_event_id(redis, session_id)
            appended = await peers.append_message(session_id, "user", turns[-1][1])
        except NotFound:
            await conversation.forget(redis, session_id)  # erased meanwhile: nothing of it stays
            raise
        except HaloWeaveError:
            await conversation.record(redis, key_id, session_id, history, None)  # nothing changed: as it was
            raise
        previous: list[Turn] | None = history
        new_tokens = appended.last_position - appended.first_position + 1
    else:
        session_id, after = await _build(deps, key_id, turns, settings)
        previous, new_tokens = None, -1
    info = await peers.get_session(session_id)
    job_id = await jobs.enqueue(redis, "generate", session_id)
    stop, events = list(chat.stop_strings() or []), [str(e) for e in chat.halo.events]
    deltas = follow(redis, session_id, after, job_id, stop, info.active_tokens, events)
    return _Reply(key_id, session_id, previous is not None, turns, previous, deltas, new_tokens)


async def _continued(deps: Deps, key_id: str, named: str | None, history: list[Turn]) -> str | None:
    """The session this request continues (taken for this reply), or None for a new one."""
    redis = deps.redis
    if named is not None:
        if await conversation.owner(redis, named) != key_id:
            raise OpenAIError(404, f"no session {named!r} for this API key", "session_not_found", "halo.session_id")
        if await conversation.claim(redis, named, history):
            return named
        if await conversation.recorded(redis, named) == "":
            raise OpenAIError(
                409, "the session is making a reply, or its last one failed (its history is unknown)", "session_busy"
            )
        raise bad_request(
            "messages: the messages before the last are not this session's history", "messages", "history_mismatch"
        )
    if not history:
        return None
    found = await conversation.find(redis, key_id, history)
    owned = found is not None and await conversation.owner(redis, found) == key_id
    if owned and found is not None and await conversation.claim(redis, found, history):
        return found
    return None


async def _build(deps: Deps, key_id: str, turns: list[Turn], settings: tracker_pb2.Settings) -> tuple[str, int]:
    """A new session holding the messages; returns it and the event id before its last (the new) message."""
    peers = deps.peers
    system = turns[0][1] if turns[0][0] == "system" else None
    info = await peers.create_session(system, settings)
    session_id = info.session_id
    await conversation.adopt(deps.redis, session_id, key_id)
    for role, text in turns[1 if system is not None else 0 : -1]:
        await peers.append_message(session_id, role, text)
    after = await jobs.last_event_id(deps.redis, session_id)
    await peers.append_message(session_id, "user", turns[-1][1])
    return session_id, after


def _failure(error: Exception) -> OpenAIError:
    if isinstance(error, ReplyFailed):
        status = 503 if error.code in ("overloaded", "busy", "unavailable") else 502
        return OpenAIError(status, f"the reply failed: {error.message}", error.code)
    if isinstance(error, RedisError):
        return OpenAIError(503, f"Redis: {error}", "unavailable")
    assert isinstance(error, HaloWeaveError)
    if error.code == "unavailable":
        return OpenAIError(504, error.message, "timeout")
    return from_domain(error)


@dataclass(frozen=True, slots=True)
class _Completion:
    id: str
    created: int
    model: str

    def halo(self, outcome: Outcome, reply: _Reply) -> dict[str, Any]:
        return {
            "session_id": reply.session_id,
            "continued": reply.continued,
            "active_tokens": outcome.active_tokens,
            "pruned_tokens": outcome.pruned_tokens,
        }

    @staticmethod
    def usage(outcome: Outcome, reply: _Reply) -> dict[str, Any]:
        # Reused: the prompt less what this request added (its message, the reply's header); a new session reuses
        # nothing. (A worker that lost the session's cache rebuilds it, the count stays what the session reused.)
        cached = outcome.prompt_tokens - outcome.header_tokens - reply.new_tokens if reply.continued else 0
        return {
            "prompt_tokens": outcome.prompt_tokens,
            "completion_tokens": outcome.completion_tokens,
            "total_tokens": outcome.prompt_tokens + outcome.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": max(0, cached)},
        }

    def whole(self, outcome: Outcome, reply: _Reply) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": outcome.text},
                    "logprobs": None,
                    "finish_reason": outcome.finish_reason,
                }
            ],
            "usage": self.usage(outcome, reply),
            "halo": self.halo(outcome, reply),
        }

    def chunk(self, choices: list[dict[str, Any]], **extra: Any) -> str:
        body = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": choices,
            **extra,
        }
        return f"data: {json.dumps(body, ensure_ascii=False, separators=(',', ':'))}\n\n"

    def delta(self, delta: dict[str, Any], finish_reason: str | None = None, **extra: Any) -> str:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        return self.chunk([choice], **extra)


async def _stream(
    deps: Deps, reply: _Reply, completion: _Completion, chat: ChatCompletionRequest
) -> AsyncGenerator[str, None]:
    """The reply as server-sent events: a role chunk, content chunks, the finish chunk (with `halo`), the usage chunk
    when asked for, then `[DONE]`. Asked-for brightness and pruned events are chunks with no choices and a `halo`
    object, as the usage chunk has no choices: OpenAI clients pass them through. A failure mid-stream is an `error`
    event, which OpenAI clients raise."""
    finished = False
    try:
        yield completion.delta({"role": "assistant", "content": ""})
        async for delta in reply.deltas:  # closed below
            if delta.text:
                yield completion.delta({"content": delta.text})
            elif delta.event is not None:
                yield completion.chunk([], halo={"event": delta.event})
            elif delta.outcome is not None:
                outcome = delta.outcome
                await reply.ended(deps, outcome)
                finished = True
                halo = completion.halo(outcome, reply)
                yield completion.delta({}, outcome.finish_reason, halo=halo)
                if chat.stream_options is not None and chat.stream_options.include_usage:
                    yield completion.chunk([], usage=completion.usage(outcome, reply), halo=halo)
        yield "data: [DONE]\n\n"
    except (ReplyFailed, HaloWeaveError, RedisError) as error:
        failure = _failure(error)
        yield f"data: {json.dumps(failure.body())}\n\n"
    finally:
        # When the client goes away this runs inside a cancelled scope, where every await is cancelled at once: the
        # reader is stopped here (its close awaits nothing that can hang), and the rest runs as a task of its own.
        with contextlib.suppress(BaseException):
            await reply.deltas.aclose()
        if not finished:
            _detach(_abandon(deps, reply))


_DETACHED: set[asyncio.Task[None]] = set()


def _detach(work: Coroutine[Any, Any, None]) -> None:
    task = asyncio.get_running_loop().create_task(work)
    _DETACHED.add(task)
    task.add_done_callback(_DETACHED.discard)


async def _abandon(deps: Deps, reply: _Reply) -> None:
    """A stream that ended before its reply did (the client went away, or the reply failed): a reply still running
    is cancelled (the worker stops at its next step), and the session's history is unknown from now on."""
    try:
        await deps.peers.cancel(reply.session_id)
    except (HaloWeaveError, RedisError) as error:
        log.warning("session %s: the reply of a closed stream could not be cancelled: %s", reply.session_id, error)
    await reply.failed(deps)
