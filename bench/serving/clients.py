"""Chat clients that press Enter at the same moment: real WebSocket connections to the gateway, one per session.

A client records when it sent its message and when each *generated* token arrived: the assistant tokens of the turn
after the header that the tracker appends at Open (those arrive before the first step), up to the reply's length
from its `done` stats (the trailer follows it).
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any

from websockets.asyncio.client import ClientConnection, connect


@dataclass
class Reply:
    sent: float = 0.0
    arrivals: list[float] = field(default_factory=list)  # generated tokens only
    done: float = 0.0
    error: str = ""
    assistant: list[float] = field(default_factory=list)  # every assistant token frame, header and trailer included

    @property
    def ttft(self) -> float:
        return self.arrivals[0] - self.sent

    @property
    def gaps(self) -> list[float]:
        return [b - a for a, b in zip(self.arrivals, self.arrivals[1:], strict=False)]


class Client:
    def __init__(self, ws: ClientConnection, header_tokens: int) -> None:
        self.ws = ws
        self.header_tokens = header_tokens

    @classmethod
    async def open(cls, ws_url: str, settings: dict[str, Any], header_tokens: int) -> Client:
        ws = await connect(ws_url, max_size=None, open_timeout=60)
        client = cls(ws, header_tokens)
        await client.send({"type": "hello"})
        await client.until(lambda f: f["type"] == "session")
        await client.send({"type": "settings", "settings": settings})
        await client.until(lambda f: f["type"] == "settings" and settings.items() <= f["settings"].items())
        return client

    async def send(self, frame: dict[str, Any]) -> None:
        await self.ws.send(json.dumps(frame))

    async def until(self, done: Any, timeout: float = 600.0) -> dict[str, Any]:
        async with asyncio.timeout(timeout):
            while True:
                frame: dict[str, Any] = json.loads(await self.ws.recv())
                if frame["type"] == "error":
                    raise RuntimeError(f"gateway error: {frame.get('code')}: {frame.get('message')}")
                if done(frame):
                    return frame

    async def chat(self, text: str, start: asyncio.Event, reply: Reply) -> Reply:
        """Sends `text` once `start` is set; `reply.assistant` fills as frames arrive, so others can watch progress."""
        await start.wait()
        reply.sent = time.perf_counter()
        await self.send({"type": "user_message", "text": text})
        async with asyncio.timeout(900):
            while True:
                frame = json.loads(await self.ws.recv())
                now = time.perf_counter()
                if frame["type"] == "token" and frame["role"] == "assistant":
                    reply.assistant.append(now)
                elif frame["type"] == "error":
                    reply.error = f"{frame.get('code')}: {frame.get('message')}"
                    return reply
                elif frame["type"] == "done":
                    n = int(frame["stats"]["tokens"])
                    reply.arrivals = reply.assistant[self.header_tokens : self.header_tokens + n]
                    reply.done = now
                    return reply

    async def close(self) -> None:
        await self.ws.close()


async def burst(
    ws_url: str, texts: list[str], settings: dict[str, Any], header_tokens: int, late: str | None = None,
    late_after_tokens: int = 4,
) -> tuple[list[Reply], Reply | None]:  # fmt: skip
    """Every text from its own new session at the same moment; with `late`, one more session sends it once every
    other reply has produced `late_after_tokens` tokens (a long prompt arriving while the others decode)."""
    clients = await asyncio.gather(*(Client.open(ws_url, settings, header_tokens) for _ in texts))
    late_client = await Client.open(ws_url, settings, header_tokens) if late is not None else None
    start = asyncio.Event()
    replies = [Reply() for _ in texts]
    tasks = [asyncio.create_task(c.chat(t, start, r)) for c, t, r in zip(clients, texts, replies, strict=True)]
    await asyncio.sleep(0.2)  # every client is waiting on the event
    start.set()
    late_reply = None
    if late_client is not None and late is not None:
        wanted = header_tokens + late_after_tokens
        while not all(len(r.assistant) >= wanted or r.done or r.error for r in replies):
            await asyncio.sleep(0.01)
        late_reply = await late_client.chat(late, start, Reply())
    await asyncio.gather(*tasks)
    for client in [*clients, *([late_client] if late_client else [])]:
        await client.close()
    return replies, late_reply
