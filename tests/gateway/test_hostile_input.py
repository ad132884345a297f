"""Client input that once broke the gateway's parsing (found by tests/fuzz): each is now a clear refusal."""

from __future__ import annotations

import json

import pytest

from services.common.errors import InvalidArgument
from services.gateway import protocol, settings_codec


@pytest.mark.parametrize(
    "raw",
    [
        "[" * 5000 + "]" * 5000,  # deeper than the JSON decoder recurses: a RecursionError, reported as `internal`
        '{"type":"settings","settings":{"boost":' + "[" * 3000 + "]" * 3000 + "}}",
        '{"a":' * 2000 + "1" + "}" * 2000,
    ],
)
def test_deeply_nested_frames_are_bad_json(raw: str) -> None:
    with pytest.raises(protocol.ProtocolError) as refused:
        protocol.parse(raw, max_frame_bytes=1 << 20, max_message_chars=100)
    assert (refused.value.code, refused.value.message) == (protocol.BAD_JSON, "frame is nested too deeply")


@pytest.mark.parametrize(
    "frame",
    [
        {"type": "hello", "session_id": "\ud800", "token": "t"},  # a Redis key no UTF-8 encoder can write
        {"type": "user_message", "text": "hi \udfff"},  # a protobuf string field refuses it
        {"type": "settings", "settings": {"stop": ["\udc00"]}},
        {"type": "settings", "settings": {"\ud83d": 1}},
        {"type": "cancel", "extra": ["\ud800"]},
    ],
)
def test_lone_surrogate_escapes_are_bad_json(frame: dict[str, object]) -> None:
    raw = json.dumps(frame)  # escaped: the text frame itself is valid UTF-8
    with pytest.raises(protocol.ProtocolError) as refused:
        protocol.parse(raw, max_frame_bytes=1 << 20, max_message_chars=100)
    assert refused.value.code == protocol.BAD_JSON and "surrogate" in refused.value.message


def test_escaped_characters_beyond_the_bmp_are_fine() -> None:
    frame = protocol.parse(json.dumps({"type": "user_message", "text": "😀 \\ud800"}), 1 << 20, 100)
    assert frame.text == "😀 \\ud800"  # a surrogate pair is one character; an escaped backslash is text


@pytest.mark.parametrize(
    "settings",
    [
        {"decay_rate": 10**400},  # a JSON integer beyond any double: OverflowError, once a 500 over REST
        {"boost": -(10**309)},
        {"aggregation": "\udc00"},  # over REST the body is parsed by the gateway itself, escapes and all
        {"stop": ["ok", "\ud800"]},
    ],
)
def test_settings_that_protobuf_cannot_carry_are_invalid(settings: dict[str, object]) -> None:
    with pytest.raises(InvalidArgument):
        settings_codec.to_pb(settings)


def _operations() -> dict[str, dict[str, object]]:
    from services.gateway.app import create_app
    from services.gateway.config import GatewayConfig

    peers = {
        "redis_url": "redis://127.0.0.1:1/0",
        "tracker_addr": "a:1",
        "snapshot_addr": "b:1",
        "inference_addr": "c:1",
    }
    schema = create_app(GatewayConfig(**peers)).openapi()
    return {f"{method.upper()} {path}": op for path, ops in schema["paths"].items() for method, op in ops.items()}


def test_the_schema_declares_every_answer_with_its_body() -> None:
    # It declared only 200 (any object) and FastAPI's 422: schemathesis found 401, 404, 400, 503 and 504 undeclared.
    operations = _operations()
    for label, op in operations.items():
        responses: dict[str, dict[str, object]] = op["responses"]  # type: ignore[assignment]
        assert "200" in responses, label
        if "{session_id}" in label:
            assert {"401", "404", "503"} <= set(responses), label
            for status, answer in responses.items():
                schema = answer["content"]["application/json"]["schema"]  # type: ignore[index]
                assert "$ref" in schema, (label, status)  # a model, not "any object"
                if status != "200":
                    assert schema["$ref"].endswith("/ErrorBody"), (label, status)  # type: ignore[index]
    assert "400" in operations["PUT /v1/sessions/{session_id}/settings"]["responses"]  # type: ignore[operator]
    assert "400" in operations["POST /v1/sessions/{session_id}/snapshots/{snapshot_id}/restore"]["responses"]  # type: ignore[operator]
    assert "504" in operations["POST /v1/sessions/{session_id}/snapshots"]["responses"]  # type: ignore[operator]
    assert "503" in operations["GET /readyz"]["responses"]  # type: ignore[operator]
    assert "text/plain" in operations["GET /metrics"]["responses"]["200"]["content"]  # type: ignore[index]
