"""The request of `POST /v1/chat/completions` as this API takes it, and the answers' shapes (for OpenAPI).

Parsing is strict: a field this API does not know is refused, and so is a known OpenAI feature it does not have
(`UNSUPPORTED`), each with a 400 that names the parameter; nothing is silently ignored.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, ValidationError

from services.gateway.openai.errors import OpenAIError, bad_request, unsupported

# Events of a reply that a stream carries besides the text, when the request asks (`halo.events`).
EXTRA_EVENTS = ("brightness", "pruned")
MAX_STOP = 4  # as OpenAI


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TextPart(_Strict):
    type: Literal["text"]
    text: StrictStr


class Message(_Strict):
    role: Literal["system", "user", "assistant"]
    content: StrictStr | list[TextPart]

    def text(self) -> str:
        """The content as one string: text parts joined with nothing between (as the model would read them)."""
        return self.content if isinstance(self.content, str) else "".join(part.text for part in self.content)


class StreamOptions(_Strict):
    include_usage: StrictBool = False


class Halo(_Strict):
    """The extension object (the openai client sends it with `extra_body={"halo": {...}}`)."""

    session_id: StrictStr | None = Field(None, description="Continue this session (one this API key owns)")
    events: list[Literal["brightness", "pruned"]] = Field(
        default_factory=list, description="Stream these events of the reply too (as `halo` chunks)"
    )


class ChatCompletionRequest(_Strict):
    model: StrictStr
    messages: list[Message] = Field(min_length=1)
    max_tokens: StrictInt | None = Field(None, ge=1)
    max_completion_tokens: StrictInt | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2, allow_inf_nan=False)
    top_p: float | None = Field(None, gt=0, le=1, allow_inf_nan=False)
    seed: StrictInt | None = None
    stop: StrictStr | list[StrictStr] | None = None
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    halo: Halo = Field(default_factory=lambda: Halo(session_id=None))

    def stop_strings(self) -> list[str] | None:
        return [self.stop] if isinstance(self.stop, str) else self.stop


def _n(value: Any) -> bool:
    return value not in (None, 1)


def _zero(value: Any) -> bool:
    return value not in (None, 0, 0.0)


def _true(value: Any) -> bool:
    return value not in (None, False)


def _given(value: Any) -> bool:
    return value not in (None, [], {})


def _format(value: Any) -> bool:
    return value is not None and value != {"type": "text"}


def _modalities(value: Any) -> bool:
    return value not in (None, ["text"])


# OpenAI parameters this API does not implement → (whether a value asks for the feature, why it is refused).
# A value that asks for nothing (n=1, a zero penalty, logprobs false, no tools) is the default and accepted.
UNSUPPORTED: dict[str, tuple[Any, str]] = {
    "n": (_n, "only one choice per request (n=1)"),
    "tools": (_given, "tool calls are not supported"),
    "tool_choice": (_true, "tool calls are not supported"),
    "parallel_tool_calls": (_true, "tool calls are not supported"),
    "functions": (_given, "function calls are not supported"),
    "function_call": (_true, "function calls are not supported"),
    "logprobs": (_true, "log probabilities are not supported"),
    "top_logprobs": (_true, "log probabilities are not supported"),
    "logit_bias": (_given, "logit bias is not supported"),
    "frequency_penalty": (_zero, "penalties are not supported (only 0)"),
    "presence_penalty": (_zero, "penalties are not supported (only 0)"),
    "response_format": (_format, 'only {"type": "text"} responses are supported'),
    "modalities": (_modalities, 'only ["text"] output is supported'),
    "audio": (_given, "audio output is not supported"),
    "prediction": (_given, "predicted outputs are not supported"),
}
# Accepted with their default value only; anything else is refused above. Removed before the model is parsed.
_DEFAULTED = tuple(UNSUPPORTED)


def parse_request(raw: bytes) -> ChatCompletionRequest:
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):
        raise OpenAIError(400, "the body is not valid JSON", "invalid_json") from None
    if not isinstance(body, dict):
        raise bad_request("the body must be a JSON object")
    for name in _DEFAULTED:
        if name in body:
            asks, why = UNSUPPORTED[name]
            if asks(body[name]):
                raise unsupported(name, f"{name}: {why}")
            del body[name]
    _check_parts(body.get("messages"))
    try:
        request = ChatCompletionRequest.model_validate(body)
    except ValidationError as error:
        first = error.errors()[0]
        param = ".".join(str(p) for p in first.get("loc", ()))
        if first.get("type") == "extra_forbidden":
            raise OpenAIError(400, f"unknown parameter: {param}", "unknown_parameter", param) from None
        raise bad_request(f"{param}: {first.get('msg', 'invalid')}", param) from None
    stops = request.stop_strings() or []
    if len(stops) > MAX_STOP or not all(stops):
        raise bad_request(f"stop: at most {MAX_STOP} non-empty strings", "stop")
    if request.max_tokens and request.max_completion_tokens and request.max_tokens != request.max_completion_tokens:
        raise bad_request("max_tokens and max_completion_tokens disagree; send one", "max_completion_tokens")
    return request


def _check_parts(messages: Any) -> None:
    """Content parts other than text (images, audio, files) are an unsupported feature, not a malformed body."""
    if not isinstance(messages, list):
        return
    for i, message in enumerate(messages):
        content = message.get("content") if isinstance(message, dict) else None
        role = message.get("role") if isinstance(message, dict) else None
        if role in ("tool", "function", "developer"):
            raise unsupported(f"messages.{i}.role", f"messages.{i}.role: {role!r} messages are not supported")
        for j, part in enumerate(content if isinstance(content, list) else []):
            kind = part.get("type") if isinstance(part, dict) else None
            if kind not in (None, "text"):
                param = f"messages.{i}.content.{j}.type"
                raise unsupported(param, f"{param}: {kind!r} content is not supported (only text)")


# ---- answers (documentation of the shapes; the routes build plain dicts) ------------------------------------------


class PromptTokensDetails(BaseModel):
    cached_tokens: int = Field(description="Prompt tokens the session already held (0 for a new session)")


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails


class HaloInfo(BaseModel):
    session_id: str
    continued: bool = Field(description="The request continued an existing session (nothing was prefilled again)")
    active_tokens: int
    pruned_tokens: int


class ReplyMessage(BaseModel):
    role: Literal["assistant"]
    content: str


class Choice(BaseModel):
    index: int
    message: ReplyMessage
    finish_reason: Literal["stop", "length"]


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[Choice]
    usage: Usage
    halo: HaloInfo


class ModelCard(BaseModel):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"]
    data: list[ModelCard]
