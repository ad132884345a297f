"""A small synchronous WebSocket chat client for tests: speaks the /v1/chat contract and collects frames."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from websockets.sync.client import ClientConnection, connect

Frame = dict[str, Any]


class ChatClient:
    def __init__(self, ws_url: str, timeout: float = 180.0) -> None:
        self.ws: ClientConnection = connect(ws_url, max_size=None, open_timeout=30)
        self.timeout = timeout
        self.frames: list[Frame] = []
        self.session: Frame | None = None

    def send(self, frame: Frame | str) -> None:
        self.ws.send(frame if isinstance(frame, str) else json.dumps(frame))

    def recv(self, timeout: float | None = None) -> Frame:
        frame: Frame = json.loads(self.ws.recv(timeout=timeout or self.timeout))
        self.frames.append(frame)
        return frame

    def recv_until(self, done: Callable[[Frame], bool], timeout: float | None = None) -> list[Frame]:
        """Frames up to and including the first one for which `done` is true."""
        deadline = time.monotonic() + (timeout or self.timeout)
        seen: list[Frame] = []
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no matching frame; last frames: {seen[-5:]}")
            frame = self.recv(remaining)
            seen.append(frame)
            if done(frame):
                return seen

    def hello(self, session_id: str | None = None, token: str | None = None, last_event_id: int | None = None) -> Frame:
        frame: Frame = {"type": "hello"}
        if session_id is not None:
            frame.update(session_id=session_id, token=token)
        if last_event_id is not None:
            frame["last_event_id"] = last_event_id
        self.send(frame)
        reply = self.recv_until(lambda f: f["type"] in ("session", "error"))[-1]
        if reply["type"] == "session":
            self.session = reply
        return reply

    def chat(self, text: str, timeout: float | None = None) -> list[Frame]:
        """Sends a user message and returns every frame up to its `done` (or an `error`)."""
        self.send({"type": "user_message", "text": text})
        return self.recv_until(lambda f: f["type"] in ("done", "error"), timeout)

    def close(self) -> None:
        self.ws.close()

    def __enter__(self) -> ChatClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def reply_text(frames: list[Frame], turn_id: int | None = None) -> str:
    """The assistant's text in these frames (template markers excluded)."""
    pieces = [
        f["token"]
        for f in frames
        if f["type"] == "token" and f["role"] == "assistant" and (turn_id is None or f["turn_id"] == turn_id)
    ]
    return "".join(pieces).replace("<|im_start|>assistant\n", "").replace("<|im_end|>", "").strip()
