"""Sans-I/O WebSocket client core, just what a load generator needs (RFC 6455).

- :class:`Handshake`: the HTTP/1.1 upgrade request and the check of the
  ``101`` answer (status, ``Upgrade``, ``Sec-WebSocket-Accept``).
- :class:`FrameReader`: bytes in, ``(opcode, payload)`` out. Server frames
  are unmasked; fragmented messages are joined; control frames may come
  between fragments.
- :func:`client_frame`: one masked client frame (its head is
  :func:`scorecast.protocol.codec.frame_header`, the gateway's own).

The one WebSocket client framing of the project: the storm client, the bench
generator, the faults harness and the tests' raw client all use it. Why not
``websockets``' sans-I/O ``ClientProtocol``: measured on this machine
(``python`` micro-benchmark, 20 event frames a read), it holds about 2.5 KiB
per connection before any frame and parses a frame in about 4.2 us, against
0.5 KiB and 0.6 us here; a storm of 100,000 connections and a generator that
must stay cheaper than the server it measures cannot pay that.

Errors are :class:`HandshakeError` (the server refused or answered wrongly)
and :class:`FrameError` (the server broke the framing rules); both are
:class:`WebSocketError`. No permessage-deflate: none is offered.
"""

from __future__ import annotations

import base64
import os
import struct

from scorecast.protocol.codec import accept_value, frame_header

try:  # the C helper that ships with websockets; the fallback is exact but slower
    from websockets.speedups import apply_mask
except ImportError:  # pragma: no cover

    def apply_mask(data: bytes | bytearray | memoryview, mask: bytes | bytearray) -> bytes:
        size = len(data)
        key = int.from_bytes(mask * (size // 4 + 1), "big") >> (8 * (4 - size % 4) % 32)
        return (int.from_bytes(data, "big") ^ key).to_bytes(size, "big")


__all__ = [
    "BINARY",
    "CLOSE",
    "CONTINUATION",
    "PING",
    "PONG",
    "TEXT",
    "FrameError",
    "FrameReader",
    "Handshake",
    "HandshakeError",
    "WebSocketError",
    "client_frame",
    "close_payload",
    "parse_close",
]

CONTINUATION, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
_MAX_HEADER = 16 * 1024


class WebSocketError(Exception):
    """Root of this module's errors."""


class HandshakeError(WebSocketError):
    """The upgrade was refused or its answer is not a valid ``101``."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class FrameError(WebSocketError):
    """The server sent a frame the protocol does not allow."""


class Handshake:
    """One client opening handshake."""

    __slots__ = ("_buffer", "accept", "host", "path", "request")

    def __init__(self, host: str, path: str = "/ws", headers: dict[str, str] | None = None):
        key = base64.b64encode(os.urandom(16))
        self.accept = accept_value(key).decode()
        lines = [
            f"GET {path} HTTP/1.1",
            f"Host: {host}",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {key.decode()}",
            "Sec-WebSocket-Version: 13",
            *(f"{name}: {value}" for name, value in (headers or {}).items()),
        ]
        self.request = ("\r\n".join(lines) + "\r\n\r\n").encode()
        self._buffer = b""

    def receive(self, data: bytes) -> bytes | None:
        """Feed response bytes; None until the head is complete, then the bytes
        after it (the first frames may arrive in the same read). Raises
        :class:`HandshakeError` when the answer is not a valid upgrade."""
        self._buffer += data
        end = self._buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(self._buffer) > _MAX_HEADER:
                raise HandshakeError("response head too large")
            return None
        head, rest = self._buffer[:end].decode("latin-1"), self._buffer[end + 4 :]
        self._buffer = b""
        status_line, *header_lines = head.split("\r\n")
        parts = status_line.split(" ", 2)
        try:
            status = int(parts[1])
        except (IndexError, ValueError):
            raise HandshakeError(f"bad status line {status_line[:80]!r}") from None
        if status != 101:
            raise HandshakeError(f"HTTP {status} {' '.join(parts[2:])}".strip(), status)
        headers = {}
        for line in header_lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if headers.get("upgrade", "").lower() != "websocket":
            raise HandshakeError("101 without 'Upgrade: websocket'", status)
        if headers.get("sec-websocket-accept") != self.accept:
            raise HandshakeError("wrong Sec-WebSocket-Accept", status)
        return rest


class FrameReader:
    """Turns server bytes into ``(opcode, payload)`` messages.

    Lean on purpose (a storm holds 100,000 of these, a bench generator parses
    every delivery): a read that ends on a frame boundary is parsed in place
    and leaves nothing behind; only a partial frame is kept for the next read.
    """

    __slots__ = ("_buffer", "_fragments", "_opcode", "max_size")

    def __init__(self, max_size: int = 1 << 20) -> None:
        self._buffer = b""
        self._fragments: list[bytes] = []
        self._opcode = 0
        self.max_size = max_size

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        if self._buffer:
            data = self._buffer + data
            self._buffer = b""
        size = len(data)
        position = 0
        out: list[tuple[int, bytes]] = []
        while size - position >= 2:
            first, second = data[position], data[position + 1]
            if second & 0x80:
                raise FrameError("masked frame from the server")
            length, head = second & 0x7F, 2
            if length == 126:
                if size - position < 4:
                    break
                (length,) = struct.unpack_from("!H", data, position + 2)
                head = 4
            elif length == 127:
                if size - position < 10:
                    break
                (length,) = struct.unpack_from("!Q", data, position + 2)
                head = 10
            if length > self.max_size:
                raise FrameError(f"frame of {length} bytes is over the {self.max_size} limit")
            end = position + head + length
            if end > size:
                break
            payload = data[position + head : end]
            position = end
            if first & 0x70:
                raise FrameError("reserved bits set (no extension was negotiated)")
            opcode, fin = first & 0x0F, first & 0x80
            if opcode >= 0x8:
                if not fin or length > 125:
                    raise FrameError("fragmented or long control frame")
                out.append((opcode, payload))
            elif opcode == CONTINUATION:
                if not self._fragments:
                    raise FrameError("continuation without a first fragment")
                self._fragments.append(payload)
                if fin:
                    out.append((self._opcode, b"".join(self._fragments)))
                    self._fragments = []
            elif self._fragments:
                raise FrameError("new message before the last one ended")
            elif fin:
                out.append((opcode, payload))
            else:
                self._opcode, self._fragments = opcode, [payload]
        if position < size:
            self._buffer = data[position:]
        return out


def client_frame(opcode: int, payload: bytes) -> bytes:
    """One final client frame with any opcode, masked as RFC 6455 requires of clients."""
    mask = os.urandom(4)
    return frame_header(0x80 | opcode, len(payload), 0x80) + mask + apply_mask(payload, mask)


def close_payload(code: int, reason: str = "") -> bytes:
    return struct.pack("!H", code) + reason.encode()[:123]


def parse_close(payload: bytes) -> tuple[int, str]:
    """Close code and reason; 1005 (no status) when the frame had none."""
    if len(payload) < 2:
        return 1005, ""
    return struct.unpack_from("!H", payload)[0], payload[2:].decode("utf-8", "replace")
