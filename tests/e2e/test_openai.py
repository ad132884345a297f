"""The OpenAI-compatible API driven by the official `openai` client against the whole real stack.

Streaming and whole replies, a conversation continued across stateless requests (the same session, only the new turn
appended: the dictionary keeps every earlier entry as it was), the `halo` extension and its events, API keys (a
wrong one, another key's session), unsupported parameters; and bad input sent raw (httpx), each refused in OpenAI's
error format with nothing changed in any session (checked through the tracker's export).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import openai
import pytest
import redis

from devstack.stack import Stack
from services.gateway.openai import api_keys

pytestmark = pytest.mark.e2e

SHORT: dict[str, Any] = {"max_tokens": 8, "temperature": 0}
QUESTION = "My cat is called Tom. What is my cat called?"


def _create_key(stack: Stack, name: str) -> str:
    async def create() -> str:
        client = redis.asyncio.Redis.from_url(stack.redis_url)
        try:
            return (await api_keys.create(client, name))[1]
        finally:
            await client.aclose()

    return asyncio.run(create())


@pytest.fixture(scope="module")
def key(stack: Stack) -> str:
    return _create_key(stack, "tests")


@pytest.fixture(scope="module")
def client(stack: Stack, key: str) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{stack.gateway_url}/v1", api_key=key, max_retries=0, timeout=180) as made:
        yield made


@pytest.fixture(scope="module")
def model(client: openai.OpenAI) -> str:
    models = client.models.list()
    assert len(models.data) == 1 and models.data[0].object == "model"
    return models.data[0].id


def export(stack: Stack, key: str, session_id: str) -> dict[str, Any]:
    answer = httpx.get(
        f"{stack.gateway_url}/v1/sessions/{session_id}/export", headers={"Authorization": f"Bearer {key}"}, timeout=30
    )
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body


def halo(obj: Any) -> dict[str, Any]:
    extra = obj.model_extra or {}
    assert "halo" in extra, obj
    value: dict[str, Any] = extra["halo"]
    return value


def owned_sessions(stack: Stack) -> int:
    with redis.Redis.from_url(stack.redis_url) as r:
        return len(list(r.scan_iter("hw:oai:owner:*")))


def test_a_whole_reply(stack: Stack, client: openai.OpenAI, key: str, model: str) -> None:
    completion = client.chat.completions.create(
        model=model,
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": QUESTION}],
        **SHORT,
    )
    assert completion.object == "chat.completion" and completion.id.startswith("chatcmpl-")
    assert completion.model == model and completion.created > 0
    choice = completion.choices[0]
    assert choice.index == 0 and choice.message.role == "assistant"
    assert choice.message.content and choice.finish_reason in ("stop", "length")
    usage = completion.usage
    assert usage is not None and usage.completion_tokens >= 1
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert usage.prompt_tokens_details is not None and usage.prompt_tokens_details.cached_tokens == 0
    info = halo(completion)
    assert info["continued"] is False
    state = export(stack, key, info["session_id"])
    tokens = state["tokens"]
    reply_turn = max(t["turn_id"] for t in tokens)
    earlier = [t for t in tokens if t["turn_id"] < reply_turn]
    assert "Be brief." in "".join(t["token"] for t in earlier if t["role"] == "system")
    assert QUESTION in "".join(t["token"] for t in earlier if t["role"] == "user")
    assert choice.message.content in "".join(t["token"] for t in tokens if t["turn_id"] == reply_turn)
    # The prompt is what the model saw: every earlier turn and the reply's header (nothing pruned here).
    assert len(earlier) < usage.prompt_tokens < len(earlier) + 8
    assert info["active_tokens"] == len(tokens) and info["pruned_tokens"] == 0
    assert state["settings"]["max_new_tokens"] == 8 and state["settings"]["temperature"] == 0


def test_a_streamed_reply_matches_the_whole_one(client: openai.OpenAI, model: str) -> None:
    messages: list[Any] = [{"role": "user", "content": [{"type": "text", "text": QUESTION}]}]
    whole = client.chat.completions.create(model=model, messages=messages, **SHORT)
    chunks = list(
        client.chat.completions.create(
            model=model, messages=messages, stream=True, stream_options={"include_usage": True}, **SHORT
        )
    )
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content  # greedy: the same reply
    finish = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finish) == 1 and finish[0].choices[0].finish_reason == whole.choices[0].finish_reason
    assert halo(finish[0])["session_id"] != halo(whole)["session_id"]
    last = chunks[-1]
    assert not last.choices and last.usage is not None
    assert last.usage.completion_tokens == whole.usage.completion_tokens if whole.usage else False
    assert halo(last)["session_id"] == halo(finish[0])["session_id"]


def test_a_conversation_continues_its_session(stack: Stack, client: openai.OpenAI, key: str, model: str) -> None:
    messages: list[Any] = [{"role": "user", "content": QUESTION}]
    first = client.chat.completions.create(model=model, messages=messages, **SHORT)
    session_id = halo(first)["session_id"]
    before = export(stack, key, session_id)["tokens"]

    messages += [
        {"role": "assistant", "content": first.choices[0].message.content},
        {"role": "user", "content": "And what colour is he?"},
    ]
    stream = client.chat.completions.create(model=model, messages=messages, stream=True, **SHORT)
    chunks = list(stream)
    info = halo(next(c for c in chunks if c.choices and c.choices[0].finish_reason))
    assert info["session_id"] == session_id and info["continued"] is True
    after = export(stack, key, session_id)["tokens"]
    # Every earlier entry is there as it was (positions, ids, turns): the history was not sent again...
    assert [(t["position"], t["token_id"], t["turn_id"]) for t in after[: len(before)]] == [
        (t["position"], t["token_id"], t["turn_id"]) for t in before
    ]
    # ...and what was added is the new user message and the reply: two turns.
    added = after[len(before) :]
    last_turn = before[-1]["turn_id"]
    assert sorted({t["turn_id"] for t in added}) == [last_turn + 1, last_turn + 2]
    assert "".join(t["token"] for t in added if t["role"] == "user").count("what colour is he?") == 1
    assert QUESTION not in "".join(t["token"] for t in added)

    # The reply as streamed continues it again, now whole.
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    messages += [{"role": "assistant", "content": text}, {"role": "user", "content": "Thanks."}]
    third = client.chat.completions.create(model=model, messages=messages, **SHORT)
    assert halo(third)["session_id"] == session_id and halo(third)["continued"] is True
    # What the session held before this request is the reused part of its prompt.
    assert third.usage is not None and third.usage.prompt_tokens_details is not None
    assert third.usage.prompt_tokens_details.cached_tokens == len(after)
    # The history it moved on from continues nothing: the same messages again make a new session.
    again = client.chat.completions.create(model=model, messages=messages[:3], **SHORT)
    assert halo(again)["session_id"] != session_id and halo(again)["continued"] is False


def test_a_session_named_explicitly(stack: Stack, client: openai.OpenAI, key: str, model: str) -> None:
    messages: list[Any] = [{"role": "user", "content": "Hello."}]
    first = client.chat.completions.create(model=model, messages=messages, **SHORT)
    session_id = halo(first)["session_id"]
    messages += [{"role": "assistant", "content": first.choices[0].message.content}, {"role": "user", "content": "Hi."}]
    second = client.chat.completions.create(
        model=model, messages=messages, extra_body={"halo": {"session_id": session_id}}, **SHORT
    )
    assert halo(second)["session_id"] == session_id and halo(second)["continued"] is True


def test_brightness_and_pruned_events_pass_through_the_client(client: openai.OpenAI, model: str) -> None:
    stream = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": QUESTION}],
        stream=True,
        extra_body={"halo": {"events": ["brightness", "pruned"]}},
        **SHORT,
    )
    chunks = list(stream)
    events = [halo(c)["event"] for c in chunks if not c.choices and "event" in (c.model_extra or {}).get("halo", {})]
    assert events and {e["type"] for e in events} <= {"brightness", "pruned"}
    assert any(e["type"] == "brightness" and e["positions"] for e in events)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def test_a_wrong_key_is_refused(stack: Stack, model: str) -> None:
    for wrong in ("hwk_0123456789abcdef_" + "x" * 43, "not-a-key"):
        with openai.OpenAI(base_url=f"{stack.gateway_url}/v1", api_key=wrong, max_retries=0) as bad:
            with pytest.raises(openai.AuthenticationError) as refused:
                bad.chat.completions.create(model=model, messages=[{"role": "user", "content": "Hi."}])
            assert refused.value.code == "invalid_api_key"
            with pytest.raises(openai.AuthenticationError):
                bad.models.list()


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"n": 2}, "n"),
        ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]}, "tools"),
        ({"logprobs": True}, "logprobs"),
        ({"presence_penalty": 0.5}, "presence_penalty"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"extra_body": {"best_of": 3}}, "best_of"),
    ],
)
def test_unsupported_parameters_are_refused(
    stack: Stack, client: openai.OpenAI, model: str, extra: dict[str, Any], param: str
) -> None:
    sessions = owned_sessions(stack)
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Hi."}], **extra)
    assert refused.value.param == param
    assert owned_sessions(stack) == sessions


def test_another_keys_session_is_not_found(stack: Stack, client: openai.OpenAI, key: str, model: str) -> None:
    first = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Hello."}], **SHORT)
    session_id = halo(first)["session_id"]
    before = export(stack, key, session_id)
    other = _create_key(stack, "someone else")
    history = [
        {"role": "user", "content": "Hello."},
        {"role": "assistant", "content": first.choices[0].message.content},
        {"role": "user", "content": "Hi."},
    ]
    with openai.OpenAI(base_url=f"{stack.gateway_url}/v1", api_key=other, max_retries=0) as stranger:
        with pytest.raises(openai.NotFoundError):
            stranger.chat.completions.create(
                model=model, messages=history, extra_body={"halo": {"session_id": session_id}}, **SHORT
            )
        # Without naming it, the same history is no conversation of this key: a session of its own.
        own = stranger.chat.completions.create(model=model, messages=history, **SHORT)
        assert halo(own)["session_id"] != session_id and halo(own)["continued"] is False
    answer = httpx.get(
        f"{stack.gateway_url}/v1/sessions/{session_id}/export", headers={"Authorization": f"Bearer {other}"}
    )
    assert answer.status_code == 401 and answer.json()["code"] == "unauthorized"
    assert export(stack, key, session_id) == before


def _post(stack: Stack, key: str, body: bytes | dict[str, Any]) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
    return httpx.post(f"{stack.gateway_url}/v1/chat/completions", content=content, headers=headers, timeout=60)


def _openai_error(answer: httpx.Response, status: int) -> dict[str, Any]:
    assert answer.status_code == status, answer.text
    body = answer.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "code", "param"}, body
    assert body["error"]["message"]
    error: dict[str, Any] = body["error"]
    return error


def test_bad_input_is_refused_and_changes_nothing(stack: Stack, client: openai.OpenAI, key: str, model: str) -> None:
    first = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Hello."}], **SHORT)
    session_id = halo(first)["session_id"]
    before = export(stack, key, session_id)
    sessions = owned_sessions(stack)
    reply = first.choices[0].message.content
    user = {"role": "user", "content": "Hi."}
    named = {"halo": {"session_id": session_id}}
    cases: list[tuple[bytes | dict[str, Any], int, str | None]] = [
        (b'{"model": "x", "messages": [', 400, "invalid_json"),
        (b"[1, 2]", 400, "invalid_value"),
        ({"model": model, "messages": [{"role": "wizard", "content": "Hi."}]}, 400, "invalid_value"),
        ({"model": model, "messages": [{"role": "tool", "content": "Hi."}]}, 400, "unsupported_parameter"),
        ({"model": model, "messages": []}, 400, "invalid_value"),
        ({"model": model, "messages": [{"role": "assistant", "content": "Hi."}]}, 400, "invalid_value"),
        ({"model": model, "messages": [{"role": "user", "content": ""}]}, 400, "invalid_value"),
        ({"model": model, "messages": [user], "max_tokens": 100_000}, 400, None),
        ({"model": model, "messages": [user], "temperature": "hot"}, 400, "invalid_value"),
        ({"model": model, "messages": [user], "surprise": 1}, 400, "unknown_parameter"),
        ({"model": "gpt-4o", "messages": [user]}, 404, "model_not_found"),
        ({"model": model, "messages": [{"role": "user", "content": "x" * 16_001}]}, 413, "message_too_large"),
        (
            {"model": model, "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
            400,
            "unsupported_parameter",
        ),
        # A history that is not the named session's: its reply is not the one returned.
        (
            {
                "model": model,
                "messages": [
                    {"role": "user", "content": "Hello."},
                    {"role": "assistant", "content": f"{reply} (edited)"},
                    user,
                ],
                **named,
            },
            400,
            "history_mismatch",
        ),
        ({"model": model, "messages": [user], "halo": {"session_id": "0" * 32}}, 404, "session_not_found"),
        ({"model": model, "messages": [user], "halo": {"events": ["everything"]}}, 400, "invalid_value"),
    ]
    for body, status, code in cases:
        error = _openai_error(_post(stack, key, body), status)
        if code is not None:
            assert error["code"] == code, (body, error)
    assert _openai_error(_post(stack, key, b"x" * (5 * 1024 * 1024)), 413)["code"] == "request_too_large"
    assert _openai_error(_post(stack, "", {"model": model, "messages": [user]}), 401)["code"] == "missing_api_key"
    wrong_method = httpx.get(f"{stack.gateway_url}/v1/chat/completions", headers={"Authorization": f"Bearer {key}"})
    assert _openai_error(wrong_method, 405)["code"] == "method_not_allowed"
    assert export(stack, key, session_id) == before
    assert owned_sessions(stack) == sessions
    # And the session still continues with its true history.
    history = [{"role": "user", "content": "Hello."}, {"role": "assistant", "content": reply}, user]
    answer = client.chat.completions.create(model=model, messages=history, extra_body=named, **SHORT)  # type: ignore[arg-type]
    assert halo(answer)["session_id"] == session_id


def _events(stack: Stack, session_id: str) -> list[dict[str, Any]]:
    with redis.Redis.from_url(stack.redis_url) as r:
        entries = r.xrange(f"hw:s:{{{session_id}}}:events")
    return [{"type": f[b"type"].decode(), **json.loads(f.get(b"data", b"{}"))} for _id, f in entries]


def test_a_stream_the_client_closes_cancels_its_reply(stack: Stack, client: openai.OpenAI, model: str) -> None:
    with redis.Redis.from_url(stack.redis_url) as r:
        before = set(r.scan_iter("hw:oai:owner:*"))
    messages: list[Any] = [{"role": "user", "content": "Write a long story about a cat."}]
    stream = client.chat.completions.create(model=model, messages=messages, stream=True, max_tokens=400)
    got = [next(stream) for _ in range(3)]
    assert got[0].choices[0].delta.role == "assistant"
    stream.close()
    with redis.Redis.from_url(stack.redis_url) as r:
        (owner_key,) = set(r.scan_iter("hw:oai:owner:*")) - before
        session_id = owner_key.decode().split("{")[1].rstrip("}")
        deadline = time.monotonic() + 60
        done: list[dict[str, Any]] = []
        while not done and time.monotonic() < deadline:
            done = [e for e in _events(stack, session_id) if e["type"] == "done"]
            time.sleep(0.2)
        assert done and done[0]["stats"]["reason"] == "cancelled" and done[0]["stats"]["tokens"] < 400
        # Its history is unknown: the conversation cannot be continued from it.
        assert r.get(f"hw:oai:history:{{{session_id}}}") == b""


def test_an_erased_session_continues_nothing(stack: Stack, client: openai.OpenAI, key: str, model: str) -> None:
    """DELETE (with the owning API key) erases the API's view of the session too: its owner, history and index."""
    messages: list[Any] = [{"role": "user", "content": "Remember the word apple."}]
    first = client.chat.completions.create(model=model, messages=messages, **SHORT)
    session_id = halo(first)["session_id"]
    erased = httpx.delete(
        f"{stack.gateway_url}/v1/sessions/{session_id}", headers={"Authorization": f"Bearer {key}"}, timeout=60
    )
    assert erased.status_code == 200, erased.text
    with redis.Redis.from_url(stack.redis_url) as r:
        assert not list(r.scan_iter(f"*{{{session_id}}}*"))
        assert not [k for k in r.scan_iter("hw:oai:conv:*") if r.get(k) == session_id.encode()]
    messages += [{"role": "assistant", "content": first.choices[0].message.content}, {"role": "user", "content": "?"}]
    again = client.chat.completions.create(model=model, messages=messages, **SHORT)
    assert halo(again)["session_id"] != session_id and halo(again)["continued"] is False
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(
            model=model, messages=messages, extra_body={"halo": {"session_id": session_id}}, **SHORT
        )


def test_a_stop_string_ends_the_reply_and_is_left_out(client: openai.OpenAI, model: str) -> None:
    messages: list[Any] = [{"role": "user", "content": QUESTION}]
    whole = client.chat.completions.create(model=model, messages=messages, max_tokens=16, temperature=0)
    text = whole.choices[0].message.content or ""
    assert " " in text.strip(), "the greedy reply has a second word"
    cut = client.chat.completions.create(model=model, messages=messages, max_tokens=16, temperature=0, stop=" ")
    assert cut.choices[0].finish_reason == "stop"
    assert cut.choices[0].message.content == text[: text.index(" ")]
    streamed = client.chat.completions.create(
        model=model, messages=messages, max_tokens=16, temperature=0, stop=[" "], stream=True
    )
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == text[: text.index(" ")]


def test_a_pruned_conversation_goes_on_from_its_pruned_context(
    stack: Stack, client: openai.OpenAI, key: str, model: str
) -> None:
    """The session's other settings are changed with the API key (REST); a budget prunes while a continued request
    replies, the stream carries the `pruned` events, and the prompt counts only what stayed active."""
    messages: list[Any] = [
        {"role": "user", "content": "My cat is called Tom. He is grey. He likes fish. He sleeps all day."}
    ]
    first = client.chat.completions.create(model=model, messages=messages, **SHORT)
    session_id = halo(first)["session_id"]
    held = len(export(stack, key, session_id)["tokens"])
    changed = httpx.put(
        f"{stack.gateway_url}/v1/sessions/{session_id}/settings",
        json={"max_context_tokens": held - 5},
        headers={"Authorization": f"Bearer {key}"},
        timeout=30,
    )
    assert changed.status_code == 200, changed.text
    messages += [{"role": "assistant", "content": first.choices[0].message.content}, {"role": "user", "content": "Hi."}]
    chunks = list(
        client.chat.completions.create(
            model=model,
            messages=messages,
            stream=True,
            stream_options={"include_usage": True},
            extra_body={"halo": {"events": ["pruned"]}},
            **SHORT,
        )
    )
    pruned = [halo(c)["event"] for c in chunks if not c.choices and "event" in (c.model_extra or {}).get("halo", {})]
    assert pruned and all(e["type"] == "pruned" and e["positions"] for e in pruned)
    info = halo(chunks[-1])
    assert info["session_id"] == session_id and info["continued"] is True and info["pruned_tokens"] > 0
    state = export(stack, key, session_id)["tokens"]
    assert info["active_tokens"] == sum(not t["deleted"] for t in state) <= held - 5
    # The prompt is what stayed active when the reply opened: within the budget, though the session held more.
    usage = chunks[-1].usage
    assert usage is not None and usage.prompt_tokens <= held - 5


def test_two_requests_continuing_one_history_at_once(stack: Stack, client: openai.OpenAI, model: str) -> None:
    """Only one of them continues the session; the other gets a session of its own (the history is taken while a
    reply is made), and neither sees the other's message."""
    first = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Hello."}], **SHORT)
    session_id = halo(first)["session_id"]
    history: list[Any] = [
        {"role": "user", "content": "Hello."},
        {"role": "assistant", "content": first.choices[0].message.content},
    ]

    def ask(text: str) -> Any:
        messages = [*history, {"role": "user", "content": text}]
        return client.chat.completions.create(model=model, messages=messages, **SHORT)

    with ThreadPoolExecutor(2) as pool:
        answers = list(pool.map(ask, ["One.", "Two."]))
    infos = [halo(a) for a in answers]
    assert sorted(i["continued"] for i in infos) == [False, True]
    assert sorted(i["session_id"] == session_id for i in infos) == [False, True]
