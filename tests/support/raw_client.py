"""A WebSocket client that reads its socket only when told to, for tests of clients that stop reading.

The websockets client reads in the background (into a queue, then into the kernel's buffer), so it never looks like
a client that reads nothing at all. This one is websockets' sans-I/O protocol over a plain socket with a small fixed
receive buffer (which also turns off receive autotuning): nothing is read until `read_to_the_end`.
"""

from __future__ import annotations

import contextlib
import json
import socket
from typing import Any
from urllib.parse import urlsplit

from websockets.client import ClientProtocol
from websockets.frames import Close, Frame, Opcode
from websockets.protocol import State
from websockets.uri import parse_uri

RECEIVE_BUFFER = 32 * 1024


def small_receive_socket(url: str) -> socket.socket:
    """A client socket connected to the URL's host and port, with a small fixed receive buffer."""
    parts = urlsplit(url)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
    sock.connect((parts.hostname or "127.0.0.1", parts.port or 80))
    return sock


class RawClient:
    def __init__(self, ws_url: str) -> None:
        self.sock = small_receive_socket(ws_url)
        self.port: int = self.sock.getsockname()[1]
        self.protocol = ClientProtocol(parse_uri(ws_url), max_size=None)
        self.protocol.send_request(self.protocol.connect())
        self._flush()
        while self.protocol.state is State.CONNECTING:
            self._read(timeout=10)
        self.frames: list[dict[str, Any]] = []  # the text frames read so far, decoded
        self.close: Close | None = None  # the server's close frame, once read

    def send(self, frame: dict[str, Any]) -> None:
        self.protocol.send_text(json.dumps(frame).encode())
        self._flush()

    def read_to_the_end(self, timeout: float = 15.0) -> None:
        """Reads (answering as a client does, a close with its echo) until the server ends the TCP connection."""
        with contextlib.suppress(ConnectionResetError):
            while self._read(timeout):
                self._flush()

    def _flush(self) -> None:
        self.sock.sendall(b"".join(self.protocol.data_to_send()))

    def _read(self, timeout: float) -> bool:
        self.sock.settimeout(timeout)
        data = self.sock.recv(1 << 16)
        if data:
            self.protocol.receive_data(data)
        else:
            self.protocol.receive_eof()
        for event in self.protocol.events_received():
            if isinstance(event, Frame) and event.opcode is Opcode.TEXT:
                self.frames.append(json.loads(event.data))
            elif isinstance(event, Frame) and event.opcode is Opcode.CLOSE:
                self.close = Close.parse(event.data)
        return bool(data)
