"""One real chat through all four services: WebSocket → gateway → tracker → Redis job → Ray worker → tracker → events.

Everything is real: redis-server, the SmolLM2 model, gRPC between processes. Replies are kept short (few tokens) so the
suite stays fast on two cores; greedy decoding makes them deterministic.
"""

from __future__ import annotations

from collections import defaultdict

import httpx
import pytest

from devstack.stack import Stack
from tests.support.chat_client import ChatClient, reply_text

pytestmark = pytest.mark.e2e

SHORT = {"max_new_tokens": 12, "temperature": 0.0}


def new_session(stack: Stack, **settings: object) -> ChatClient:
    client = ChatClient(stack.ws_url)
    session = client.hello()
    assert session["type"] == "session", session
    wanted = {**SHORT, **settings}
    client.send({"type": "settings", "settings": wanted})
    # A new session first replays its own history (system prompt tokens, initial settings): wait for ours.
    applied = client.recv_until(
        lambda f: f["type"] == "error" or (f["type"] == "settings" and wanted.items() <= f["settings"].items())
    )[-1]
    assert applied["type"] == "settings", applied
    return client


def test_a_reply_streams_with_changing_brightness_and_exports(stack: Stack) -> None:
    with new_session(stack) as client:
        assert client.session is not None
        assert client.session["model"], "the session frame names the model"
        session_id, token = client.session["session_id"], client.session["token"]

        frames = client.chat("My cat is called Tom. What is my cat called?")
        assert frames[-1]["type"] == "done", frames[-3:]

        ids = [f["event_id"] for f in client.frames if f["type"] != "session"]
        assert ids == sorted(ids) and len(ids) == len(set(ids)), "event ids increase strictly"

        tokens = [f for f in frames if f["type"] == "token"]
        user = [f for f in tokens if f["role"] == "user"]
        assert "Tom" in "".join(f["token"] for f in user)
        text = reply_text(frames)
        assert text, "the model produced a reply"
        assistant_ids = [f["token_id"] for f in tokens if f["role"] == "assistant"]
        assert len(assistant_ids) >= 3  # header tokens plus generated ones

        # Brightness: several steps, and some token's score moved between steps.
        brightness = [f for f in frames if f["type"] == "brightness"]
        assert len(brightness) >= 2
        history: dict[int, list[float]] = defaultdict(list)
        for frame in brightness:
            assert len(frame["positions"]) == len(frame["scores"])
            for position, score in zip(frame["positions"], frame["scores"], strict=True):
                history[position].append(score)
        assert any(len(set(scores)) > 1 for scores in history.values()), "scores change between steps"

        done = frames[-1]
        assert done["stats"]["tokens"] >= 1

        # Export: the full dictionary with every field of DESIGN.md section 2, matching what streamed.
        headers = {"Authorization": f"Bearer {token}"}
        export = httpx.get(f"{stack.gateway_url}/v1/sessions/{session_id}/export", headers=headers, timeout=30)
        assert export.status_code == 200, export.text
        body = export.json()
        entries = body["tokens"]
        fields = {"token", "token_id", "position", "attention_score", "turn_id", "sentence_id", "role", "deleted"}
        assert all(fields <= set(entry) for entry in entries)
        positions = [entry["position"] for entry in entries]
        assert positions == sorted(positions) and len(positions) == len(set(positions))
        assert {entry["role"] for entry in entries} == {"system", "user", "assistant"}
        exported_reply = [e["token_id"] for e in entries if e["role"] == "assistant"]
        assert exported_reply[: len(assistant_ids)] == assistant_ids
        assert body["settings"]["max_new_tokens"] == SHORT["max_new_tokens"]
        assert any(entry["attention_score"] > 0 for entry in entries)

        wrong = httpx.get(
            f"{stack.gateway_url}/v1/sessions/{session_id}/export",
            headers={"Authorization": "Bearer not-the-token"},
            timeout=30,
        )
        assert wrong.status_code in (401, 403)


def test_bad_frames_get_errors_and_the_connection_stays_usable(stack: Stack) -> None:
    with ChatClient(stack.ws_url) as client:
        client.send("{not json")
        assert client.recv()["type"] == "error"
        client.send({"type": "no_such_frame"})
        assert client.recv()["type"] == "error"
        reply = client.hello(session_id="does-not-exist", token="x")
        assert reply["type"] == "error"
        assert client.hello()["type"] == "session", "still usable after errors"
        client.send({"type": "settings", "settings": {"max_new_tokens": -3}})
        error = client.recv_until(
            lambda f: f["type"] == "error" or (f["type"] == "settings" and f["settings"]["max_new_tokens"] == -3)
        )[-1]
        assert error["type"] == "error" and "max_new_tokens" in error["message"]


def test_second_turn_continues_the_conversation(stack: Stack) -> None:
    with new_session(stack) as client:
        first = client.chat("Remember the number 42.")
        assert first[-1]["type"] == "done"
        second = client.chat("Which number did I ask you to remember?")
        assert second[-1]["type"] == "done"
        turns = {f["turn_id"] for f in second if f["type"] == "token"}
        assert min(turns) > min(f["turn_id"] for f in first if f["type"] == "token")
        assert reply_text(second)
