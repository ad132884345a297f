"""The WebSocket server protocol the gateway runs under: uvicorn's own, with two changes for clients that stop reading.

uvicorn sends nothing while the transport's write buffer is over its high-water mark (64 KiB), and when the
application is done with a connection it closes the transport gracefully, after which asyncio waits for the client to
take every byte still buffered for it. A client that stops reading therefore never got its close frame (the gateway
gives up on the send after a while), and its socket, buffers and protocol object stayed for as long as it kept the TCP
connection open (its kernel answers the window probes; nothing times out). Here:

- a close frame (a few bytes) is queued behind what the client has not read yet instead of waiting for room, so a
  client that reads again later meets the close code (4429 for `slow_consumer`) after the frames it missed;
- a connection the application is done with that is still open after `close_timeout` (uvicorn's 10 s, the time it
  gives a close handshake) is aborted.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol


def _set_event() -> asyncio.Event:
    event = asyncio.Event()
    event.set()
    return event


class LingerBoundedProtocol(WebSocketsSansIOProtocol):
    async def send(self, message: Any) -> None:
        if message.get("type") != "websocket.close" or self.writable.is_set():
            await super().send(message)
            return
        # The base waits on `writable` first: a set event in its place for this one call lets the close through (the
        # wait returns at once and nothing else runs meanwhile; the real one stays clear until resume_writing).
        writable, self.writable = self.writable, _set_event()
        try:
            await super().send(message)
        finally:
            self.writable = writable

    async def run_asgi(self) -> None:
        await super().run_asgi()
        if not self.disconnected:
            self.loop.call_later(self.close_timeout, self._abort_if_lingering)

    def _abort_if_lingering(self) -> None:
        if not self.disconnected and self.transport is not None:
            self.transport.abort()
