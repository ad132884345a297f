"""Refusals of the OpenAI-compatible routes, in OpenAI's error format.

`{"error": {"message", "type", "code", "param"}}`, as the official API answers, so that OpenAI clients raise their
usual exceptions (AuthenticationError for 401, BadRequestError for 400, NotFoundError for 404, ...). This path is
kept apart from the session routes' `{code, message}` bodies (services/gateway/rest.py): these routes raise only
`OpenAIError`, and `translate` turns the domain and Redis errors they meet into one.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from fastapi.responses import JSONResponse
from redis.exceptions import RedisError

from services.common.errors import FailedPrecondition, HaloWeaveError, InvalidArgument, NotFound

INVALID_REQUEST = "invalid_request_error"
AUTHENTICATION = "authentication_error"
SERVER = "server_error"
_TYPES = {401: AUTHENTICATION, 500: SERVER, 502: SERVER, 503: SERVER, 504: SERVER}


class OpenAIError(Exception):
    def __init__(
        self, status: int, message: str, code: str | None = None, param: str | None = None, kind: str | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.kind = kind or _TYPES.get(status, INVALID_REQUEST)

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "code": self.code, "param": self.param}}


def response(error: OpenAIError) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if error.status == 401 else None
    return JSONResponse(error.body(), status_code=error.status, headers=headers)


def bad_request(message: str, param: str | None = None, code: str = "invalid_value") -> OpenAIError:
    return OpenAIError(400, message, code, param)


def unsupported(param: str, message: str) -> OpenAIError:
    return OpenAIError(400, message, "unsupported_parameter", param)


def from_domain(error: HaloWeaveError, param: str | None = None) -> OpenAIError:
    """A tracker's or worker's refusal as the answer a client of this API gets."""
    if isinstance(error, InvalidArgument):
        return bad_request(error.message, param)
    if isinstance(error, NotFound):
        return OpenAIError(404, error.message, "session_not_found", "halo.session_id")
    if isinstance(error, FailedPrecondition):
        return OpenAIError(409, error.message, "session_busy")
    if error.code in ("unavailable", "overloaded", "busy"):
        return OpenAIError(503, error.message, error.code)
    return OpenAIError(502, error.message, error.code)


@contextmanager
def translate(param: str | None = None) -> Iterator[None]:
    try:
        yield
    except HaloWeaveError as error:
        raise from_domain(error, param) from None
    except RedisError as error:
        raise OpenAIError(503, f"Redis: {error}", "unavailable") from None


# The bodies the OpenAPI schema declares for each refusal (tests/fuzz holds the routes to them).
ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type", "code", "param"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "code": {"type": ["string", "null"]},
                "param": {"type": ["string", "null"]},
            },
        }
    },
}
_WHY = {
    400: "The request is malformed or asks for something this API does not support (named in `param`)",
    401: "No API key, or one that is not valid",
    404: "No such model, or a session this key does not own",
    409: "The session is generating a reply, or its history is unknown after a failed one",
    413: "The body or one message is over the size limit",
    502: "A peer failed",
    503: "A peer or Redis did not answer, or the workers are overloaded; retry",
    504: "The reply made no progress in time",
}


def responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {
        status: {"description": _WHY[status], "content": {"application/json": {"schema": ERROR_SCHEMA}}}
        for status in statuses
    }


PATHS = ("/v1/chat/completions", "/v1/models")


def is_openai_path(path: str) -> bool:
    return path.rstrip("/") in PATHS


def from_http(status: int, detail: str) -> OpenAIError:
    """What Starlette refuses by itself on these paths (a wrong method) in this format."""
    code = {404: "not_found", 405: "method_not_allowed"}.get(status, "invalid_request")
    return OpenAIError(status, detail, code)
