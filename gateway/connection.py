"""One client connection: an asyncio Protocol around websockets' sans-I/O
``ServerProtocol``.

No task, coroutine or future per connection: bytes in go through
``receive_data()`` and come out as a handshake request or frames, handled in
the callback; bytes out are either the protocol's own (handshake response,
pongs, close frames) or whole server frames the node encoded once per event
and hands over to ``write()``, which puts them straight on the transport.
Pings, handshake and close timeouts are swept by :class:`gateway.server.Gateway`
for all connections at once.

What a slow reader is owed stays where it can still be dropped. The kernel's
send buffer is bounded per socket (``--socket-send-buffer``, SO_SNDBUF) and
the transport's buffer by its high-water mark: past it (``pause_writing``)
frames wait in ``withheld``, in user space, split at frame boundaries. A
slow-consumer close (4008) discards the withheld frames and the outbox, so
the close frame follows at most the transport's and the kernel's buffers
(about 300 KB) instead of megabytes of stale events, and the client reads
4008 within moments. Other closes still deliver what is owed first (an
error, a ``reconnect`` hint).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import socket
import time
from typing import TYPE_CHECKING, cast

from websockets.frames import Frame, Opcode
from websockets.http11 import Request, Response
from websockets.protocol import Protocol, State
from websockets.server import ServerProtocol

from scorecast.gateway.admission import Strikes, TokenBucket
from scorecast.gateway.auth import OPEN, Grant
from scorecast.gateway.http_api import Deferred
from scorecast.gateway.outbox import Outbox
from scorecast.gateway.sse import SseRequest
from scorecast.protocol import PROTOCOL_VERSION
from scorecast.protocol.codec import decode_client, encode, text_frame
from scorecast.protocol.errors import ClientError, CloseCode, RateLimited
from scorecast.protocol.messages import Auth, Ping, Pong, Subscribe, Unsubscribe, Welcome

if TYPE_CHECKING:
    from scorecast.gateway.server import Gateway

__all__ = ["Client"]

ABUSE_WINDOW = 60.0
RATE_WINDOW = 10.0
PING_FRAME = b"\x89\x00"  # an empty, unmasked ping: the same bytes for everyone
# one write to the transport at most this big (whole frames; a larger frame
# goes alone): with uvloop's 64 KiB high-water mark, a paused transport holds
# at most about 128 KiB that a slow close cannot take back
WRITE_CHUNK = 64 * 1024

# websockets logs every connection's opening and closing at INFO: one line per
# connection is too many for a gateway holding millions.
_quiet = logging.getLogger("websockets.scorecast")
_quiet.setLevel(logging.WARNING)


class Client(asyncio.Protocol):
    """A client connection; what the node addresses. Hashable by identity."""

    transport: asyncio.Transport  # from connection_made on (nothing uses it before)

    __slots__ = (
        "bucket",
        "closed",
        "closing_since",
        "expiry",
        "fragments",
        "gateway",
        "grant",
        "last_seen",
        "limited",
        "malformed",
        "opened",
        "outbox",
        "session",
        "started",
        "transport",
        "withheld",
        "withheld_bytes",
        "writable",
        "ws",
    )

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.ws = ServerProtocol(max_size=gateway.settings.max_message_size, logger=_quiet)
        self.outbox = Outbox()
        self.session = ""
        self.grant: Grant = OPEN
        self.expiry: asyncio.TimerHandle | None = None
        self.bucket: TokenBucket | None = None
        self.malformed: Strikes | None = None
        self.limited: Strikes | None = None
        self.fragments: list[bytes] | None = None
        self.started = self.last_seen = time.monotonic()
        self.closing_since = 0.0
        self.opened = False
        self.closed = False
        # True while the protocol is OPEN: a plain flag, read on every write
        self.writable = False
        # frames waiting while the transport is paused (None: not paused)
        self.withheld: list[bytes] | None = None
        self.withheld_bytes = 0

    # --- what the node calls --------------------------------------------------

    def write(self, data: bytes) -> None:
        if not self.writable:
            return
        if self.withheld is not None:
            self.withheld.append(data)
            self.withheld_bytes += len(data)
            return
        if len(data) <= WRITE_CHUNK:
            self.transport.write(data)
            return
        # a burst: hand it over in chunks while the transport takes them
        # (pause_writing() sets withheld from inside transport.write)
        view, start, end = memoryview(data), 0, len(data)
        while start < end:
            if self.withheld is not None:
                rest = data[start:]
                self.withheld.append(rest)
                self.withheld_bytes += len(rest)
                return
            cut = _frames_within(data, start, WRITE_CHUNK)
            self.transport.write(view[start:cut])
            start = cut

    def unsent(self) -> int:
        return self.transport.get_write_buffer_size() + self.withheld_bytes

    def close(self, code: int, reason: str) -> None:
        """Close with ``code`` once what is owed (an error, a hint) went out;
        a slow consumer's backlog is dropped instead, so that it sees 4008."""
        if self.closed:
            return
        self.gateway.node.core.indirect(self)  # what the lanes owe it joins the outbox
        withheld, self.withheld = self.withheld, None
        self.withheld_bytes = 0
        if code == CloseCode.SLOW_CONSUMER:
            owed = self.outbox.frames
            self.outbox.frames = []
            dropped = sum(map(len, owed)) + sum(map(len, withheld or ()))
            self.gateway.node.stats.slow_bytes_dropped += dropped
        else:
            owed = self.outbox.take()
            if self.writable and (withheld or owed):
                self.transport.write(b"".join([*(withheld or ()), owed]))
        self.closed = True
        self.writable = False
        self.closing_since = time.monotonic()
        self.gateway.closing.add(self)
        if self.ws.state is State.OPEN:
            self.ws.send_close(code, reason)
            self._flush_protocol()
        else:
            self.transport.abort()

    # --- asyncio.Protocol -----------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport = cast(asyncio.Transport, transport)
        # the core writes straight to the transport while it is not paused, and
        # asks the slow-client policy only once it is: so it pauses no later
        # than the policy's lower limit
        policy = self.gateway.node.policy
        high = min(WRITE_CHUNK, policy.soft_limit, policy.hard_limit)
        if high < WRITE_CHUNK:
            transport.set_write_buffer_limits(high=high)
        send_buffer = self.gateway.settings.socket_send_buffer
        if send_buffer:
            sock = transport.get_extra_info("socket")
            if sock is not None:  # the kernel doubles it (bookkeeping): 64 KiB holds 128
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, send_buffer)
        self.gateway.connection_made(self)

    def pause_writing(self) -> None:
        if self.withheld is None:
            self.withheld = []
        self.gateway.node.core.indirect(self)

    def resume_writing(self) -> None:
        withheld, self.withheld = self.withheld, None
        self.withheld_bytes = 0
        if withheld:
            self.write(b"".join(withheld))
        if self.withheld is None and self.writable:
            self.gateway.node.core.direct(self, self.transport.write)

    def data_received(self, data: bytes) -> None:
        self.last_seen = time.monotonic()
        ws = self.ws
        if (
            len(data) >= 6
            and data[0] == 0x8A  # FIN, no RSV bits, PONG
            and data[1] & 0x80  # masked, as a client's frame must be
            and (data[1] & 0x7F) <= 125
            and len(data) == 6 + (data[1] & 0x7F)  # one whole frame, nothing else
            and self.writable
            and _between_frames(ws)
        ):
            return  # an answer to our ping, alone: proof of life (last_seen), nothing else
        ws.receive_data(data)
        for event in ws.events_received():
            if isinstance(event, Frame):
                self._frame(event)
            elif isinstance(event, Request):
                self._handshake(event)
        if self.writable and ws.state is not State.OPEN:
            self.writable = False  # the peer closed, or the protocol failed
            self.gateway.node.core.indirect(self)
        self._flush_protocol()

    def eof_received(self) -> bool:
        self.ws.receive_eof()
        self._flush_protocol()
        return False  # let the transport close itself

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.writable = False
        self.withheld, self.withheld_bytes = None, 0
        self.gateway.connection_lost(self)
        # The protocol's parser is a generator holding the protocol: a cycle
        # that only the cyclic collector would free, and the gateway runs it
        # rarely (see run_gateway). Closing the generator frees it at once.
        self.ws.parser.close()

    # --- inside ---------------------------------------------------------------

    def _flush_protocol(self) -> None:
        """Write what the protocol produced; close the socket when it says so."""
        for data in self.ws.data_to_send():
            if data:
                self.transport.write(data)
            else:  # end of the stream: as the server, close TCP first
                self.transport.close()
        if self.ws.state is State.CLOSED and not self.transport.is_closing():
            self.transport.close()

    def _handshake(self, request: Request) -> None:
        response = self.gateway.route(self, request)
        if isinstance(response, SseRequest | Deferred):
            response.start(self)  # an SSE stream takes the socket, or an answer comes later
            return
        if response is None:
            response = self.ws.accept(request)
        self.ws.send_response(response)
        if self.ws.state is State.OPEN:
            _release_handshake(self.ws)
            self.opened = self.writable = True
            self.session = secrets.token_hex(8)
            self.gateway.connection_opened(self)
            self.gateway.node.core.direct(self, self.transport.write)
            settings = self.gateway.settings
            welcome = Welcome(
                protocol=PROTOCOL_VERSION,
                session=self.session,
                node=settings.node,
                heartbeat=settings.heartbeat,
            )
            self.gateway.node.send(self, text_frame(encode(welcome)))

    def respond(self, response: Response) -> None:
        """Write an HTTP answer that was deferred (gateway.http_api), unless
        the peer left meanwhile."""
        if self.transport.is_closing():
            return
        self.ws.send_response(response)
        self._flush_protocol()

    def _frame(self, frame: Frame) -> None:
        opcode = frame.opcode
        if opcode is Opcode.TEXT:
            data = bytes(frame.data)  # bytes already (websockets' parser): no copy
            if frame.fin:
                self._message(data)
            else:
                self.fragments = [data]
        elif opcode is Opcode.CONT and self.fragments is not None:
            self.fragments.append(bytes(frame.data))
            if frame.fin:
                data, self.fragments = b"".join(self.fragments), None
                self._message(data)
        elif opcode is Opcode.BINARY:
            self.gateway.node.stats.abuse_closes += 1
            self.close(CloseCode.PROTOCOL_ABUSE, "binary frames are not accepted")
        # PING is answered by the protocol itself; PONG only proves life (last_seen)

    def _message(self, data: bytes) -> None:
        if self.closed:
            return  # what arrives after our close frame is not answered
        try:
            text = data.decode()
        except UnicodeDecodeError:
            self.ws.fail(1007, "invalid UTF-8")
            self.closed = True
            return
        node = self.gateway.node
        settings = self.gateway.settings
        now = time.monotonic()
        try:
            message = decode_client(text, settings.max_topics_per_request)
        except ClientError as error:
            node.send_error(self, error)
            if self.malformed is None:
                self.malformed = Strikes(settings.max_malformed_per_minute, ABUSE_WINDOW)
            if self.malformed.add(now):
                node.stats.abuse_closes += 1
                self.close(CloseCode.PROTOCOL_ABUSE, "repeated malformed messages")
            return
        if self.bucket is None:
            self.bucket = TokenBucket(settings.messages_per_second, settings.message_burst, now)
        if not self.bucket.take(now):
            node.stats.rate_limited += 1
            node.send_error(self, RateLimited("too many messages", message.id))
            if self.limited is None:
                self.limited = Strikes(settings.message_burst, RATE_WINDOW)
            if self.limited.add(now):
                self.close(CloseCode.RATE_LIMITED, "rate limit exceeded repeatedly")
            return
        try:
            if isinstance(message, Subscribe):
                node.subscribe(self, message)
                self.gateway.occupancy.watch(self, message.topics, message.occupancy)
            elif isinstance(message, Unsubscribe):
                node.unsubscribe(self, message)
                self.gateway.occupancy.watch(self, message.topics, False)
            elif isinstance(message, Ping):
                node.send(self, text_frame(encode(Pong(id=message.id))))
            elif isinstance(message, Auth):
                node.authenticate(self, message)
        except ClientError as error:
            node.send_error(self, error)


def _between_frames(ws: ServerProtocol) -> bool:
    """Is websockets' parser waiting for the first byte of a frame (nothing
    of a frame read yet)? Then bytes that are one whole frame may be taken
    past it without changing what it would have done with the next ones."""
    if ws.reader.buffer:
        return False
    parser = ws.parser
    inner = getattr(parser, "gi_yieldfrom", None)
    while inner is not None:
        parser, inner = inner, getattr(inner, "gi_yieldfrom", None)
    code = getattr(parser, "gi_code", None)
    return code is not None and code.co_name == "at_eof"


def _release_handshake(ws: ServerProtocol) -> None:
    """Forget the upgrade request once the connection is open.

    websockets' server parser is a generator whose frame keeps the parsed
    ``Request`` (its headers: about 1.5 KiB) alive as a local for the whole
    life of the connection. When that generator waits between frames (in the
    reader's ``at_eof``, nothing half-read), a fresh frame parser, the same
    one it delegates to, takes its place; otherwise (bytes of a frame already
    read) it is left alone."""
    inner = getattr(ws.parser, "gi_yieldfrom", None)  # Protocol.parse, run by ServerProtocol's
    waiting = getattr(inner, "gi_yieldfrom", None)
    if waiting is None or waiting.gi_code.co_name != "at_eof" or ws.reader.buffer:
        return
    parser = Protocol.parse(ws)
    next(parser)  # runs to the same wait: the buffer is empty
    ws.parser.close()
    ws.parser = parser


def _frames_within(data: bytes, start: int, limit: int) -> int:
    """The end of the last whole frame of ``data[start:]`` that fits in
    ``limit`` bytes (at least one frame). Server frames are unmasked."""
    end, position, size = len(data), start, 0
    while position < end:
        length = data[position + 1] & 0x7F
        header = 2
        if length == 126:
            length, header = int.from_bytes(data[position + 2 : position + 4]), 4
        elif length == 127:
            length, header = int.from_bytes(data[position + 2 : position + 10]), 10
        frame = header + length
        if size and size + frame > limit:
            break
        size += frame
        position += frame
    return min(position, end)
