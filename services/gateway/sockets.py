"""The WebSocket server protocol the gateway runs under: uvicorn's own, with one change for clients that stop reading.

When the application is done with a connection, uvicorn closes the transport gracefully: asyncio then waits for the
client to take every byte still buffered for it (and the close frame) before it lets the socket go. A client that
never reads again never takes them, so the socket, its buffers and the protocol object would stay for as long as the
client keeps the TCP connection open (its kernel answers the window probes; nothing times out). Here such a
connection is aborted once the close handshake has had `close_timeout` (uvicorn's 10 s) to finish.
"""

from __future__ import annotations

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol


class LingerBoundedProtocol(WebSocketsSansIOProtocol):
    async def run_asgi(self) -> None:
        await super().run_asgi()
        if not self.disconnected:
            self.loop.call_later(self.close_timeout, self._abort_if_lingering)

    def _abort_if_lingering(self) -> None:
        if not self.disconnected and self.transport is not None:
            self.transport.abort()
