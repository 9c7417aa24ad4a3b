"""One storm client: a lean asyncio ``Protocol`` speaking the scorecast protocol.

No task and no queue per connection: frames are parsed in ``data_received``
and counted into the worker's :class:`~loadtest.tally.Tally`. The same object
serves every TCP connection of one logical client, so its topic positions
survive a reconnect and the resubscribe carries ``since``.

Lifecycle of one link: ``connect()`` opens TCP from a chosen source address,
sends the upgrade, then ``subscribe``; it returns once ``subscribed`` arrives.
``on_lost`` (set by the worker) is told when a link ends without the client
having asked for it, with the delay the gateway hinted (``reconnect``), if any.
"""

from __future__ import annotations

import asyncio
import contextlib
import resource
import socket
import time
from collections.abc import Callable
from typing import cast

import msgspec

from scorecast.loadtest.frames import (
    CLOSE,
    PING,
    PONG,
    TEXT,
    FrameReader,
    Handshake,
    WebSocketError,
    client_frame,
    close_payload,
    parse_close,
)
from scorecast.loadtest.tally import Tally
from scorecast.loadtest.tracker import Arrival, Positions

__all__ = ["IP_BIND_ADDRESS_NO_PORT", "StormClient", "Target", "dial", "raise_file_limit"]

# Linux: pick the ephemeral port at connect() rather than bind(), so one source
# address gets ~28,000 ports per destination instead of ~28,000 in all
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)


async def dial(
    host: str, port: int, source: str | None = None, receive_buffer: int | None = None
) -> socket.socket:
    """A TCP socket connected from ``source`` (any address when None), the way
    every load generator here opens its connections; ``receive_buffer`` sets
    ``SO_RCVBUF`` first (a tiny one makes a slow phone).

    ``IP_BIND_ADDRESS_NO_PORT`` defers the choice of the local port to
    ``connect()``: a plain ``bind((source, 0))`` searches the bound ports one
    by one, which makes opening 10,000 connections quadratic in kernel time
    (and the generator, not the server, the bottleneck).
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        if receive_buffer is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        if source is not None:
            sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
            sock.bind((source, 0))
        await asyncio.get_running_loop().sock_connect(sock, (host, port))
    except BaseException:
        sock.close()
        raise
    return sock


def raise_file_limit() -> int:
    """Lift this process's open-file limit to the hard one (children inherit
    it); the limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


class Target(msgspec.Struct, frozen=True):
    host: str
    port: int
    path: str = "/ws"


class _Frame(msgspec.Struct):
    """The fields of gateway frames a load generator looks at; the rest is skipped."""

    type: str = ""
    topic: str = ""  # every frame that has them carries topic and seq
    seq: int = 0
    ts: float | None = None  # null in the snapshot of a topic with no data
    code: str | None = None
    after_ms: int | None = None


_decode = msgspec.json.Decoder(_Frame).decode
_encode = msgspec.json.Encoder().encode
_ARRIVAL_COUNTER = {
    Arrival.GAP: "gaps",
    Arrival.DUPLICATE: "duplicates",
    Arrival.BACKWARDS: "backwards",
    Arrival.NO_SNAPSHOT: "no_snapshot",
}


class StormClient(asyncio.Protocol):
    __slots__ = (
        "_handshake",
        "_reader",
        "_ready",
        "_requests",
        "hint_ms",
        "leaving",
        "link_wall",
        "links",
        "on_lost",
        "positions",
        "requested_at",
        "route",
        "snapshot_due",
        "started",
        "tally",
        "topics",
        "transport",
        "up",
    )

    def __init__(self, topics: list[str], tally: Tally) -> None:
        self.topics = topics
        self.tally = tally
        self.positions = Positions()
        self.transport: asyncio.Transport | None = None
        self.links = 0  # links that reached `subscribed`
        self.up = False
        self.leaving = False  # the client itself is closing or cutting this link
        self.hint_ms: int | None = None
        self.on_lost: Callable[[StormClient, int | None], None] | None = None
        self._handshake: Handshake | None = None
        self._reader: FrameReader  # set by connect(), before any data can arrive
        self._ready: asyncio.Future[None] | None = None
        self._requests = 0
        self.route: tuple[Target, str | None] | None = None  # set by the owner
        self.started = 0.0
        self.link_wall = 0.0  # wall clock when this link began (envelope ts is wall clock)
        self.requested_at = 0.0  # when this link's subscribe went out
        self.snapshot_due = False  # this link's first snapshot is still to come

    # --- opening ---------------------------------------------------------------

    max_frame = 1 << 20  # the largest frame a link takes (FrameError beyond)

    async def connect(
        self, target: Target, source: str | None, timeout: float, receive_buffer: int | None = None
    ) -> None:
        """One link, up to ``subscribed``. Raises OSError, TimeoutError or WebSocketError."""
        loop = asyncio.get_running_loop()
        self.started = time.monotonic()
        self.link_wall = time.time()
        self.leaving, self.hint_ms = False, None
        self._handshake = Handshake(f"{target.host}:{target.port}", target.path)
        self._reader = FrameReader(self.max_frame)
        self._ready = loop.create_future()
        sock: socket.socket | None = None
        try:
            async with asyncio.timeout(timeout):
                sock = await dial(target.host, target.port, source, receive_buffer)
                await loop.create_connection(lambda: self, sock=sock)
                await self._ready
        except BaseException:
            if sock is not None:
                sock.close()
            self.abort()
            raise

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # create_connection() hands a stream transport; the base signature names BaseTransport
        self.transport = cast(asyncio.Transport, transport)
        assert self._handshake is not None  # set by connect() before the connection
        self.transport.write(self._handshake.request)

    def _opened(self) -> None:
        tally = self.tally
        tally.opened += 1
        now = time.monotonic()
        tally.window["connect"].record(now - self.started)
        self._requests += 1
        request = {"type": "subscribe", "id": self._requests, "topics": self.topics}
        since = self.positions.since(self.topics)
        if since:
            request["since"] = since
        self.send(_encode(request))
        self.requested_at, self.snapshot_due = now, True

    # --- receiving -------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        self.tally.bytes_in += len(data)
        try:
            if self._handshake is not None:
                rest = self._handshake.receive(data)
                if rest is None:
                    return
                self._handshake = None
                self._opened()
                data = rest
            for opcode, payload in self._reader.feed(data):
                if opcode == TEXT:
                    self._message(payload)
                elif opcode == PING:
                    if self.transport is not None:
                        self.transport.write(client_frame(PONG, payload))
                elif opcode == CLOSE:
                    self._closed_by_server(*parse_close(payload))
        except (WebSocketError, msgspec.DecodeError) as error:
            self._fail(error)

    def _message(self, payload: bytes) -> None:
        frame = _decode(payload)
        tally = self.tally
        kind = frame.type
        if kind == "event":
            tally.events += 1
            ts = frame.ts
            assert ts is not None  # an event always carries its envelope's ts
            if ts >= self.link_wall or self.links <= 1:  # first link: all live
                tally.window["delivery"].record(time.time() - ts)
            else:  # published while this client was away: replayed per since
                tally.catch_up += 1
                tally.window["catch_up"].record(time.time() - ts)
            verdict = self.positions.event(frame.topic, frame.seq)
            if verdict is not Arrival.OK:
                counter = _ARRIVAL_COUNTER[verdict]
                setattr(tally, counter, getattr(tally, counter) + 1)
        elif kind == "snapshot":
            if self.snapshot_due:
                tally.window["first_snapshot"].record(time.monotonic() - self.requested_at)
                self.snapshot_due = False
            tally.snapshots += 1
            self.positions.snapshot(frame.topic, frame.seq)
        elif kind == "subscribed":
            self._subscribed()
        elif kind == "pong":
            tally.pongs += 1
        elif kind == "error":
            tally.error_frames += 1
            tally.error(f"error:{frame.code}")
        elif kind == "reconnect":
            self.hint_ms = frame.after_ms

    def _subscribed(self) -> None:
        tally = self.tally
        tally.subscribed += 1
        tally.window["subscribe"].record(time.monotonic() - self.requested_at)
        if self.links:
            tally.reconnects += 1
        self.links += 1
        self.up = True
        tally.up += 1
        if self._ready is not None and not self._ready.done():
            self._ready.set_result(None)

    # --- closing ---------------------------------------------------------------

    def _closed_by_server(self, code: int, reason: str) -> None:
        if code == 1012 and self.hint_ms is None:
            self.hint_ms = 0
        if self.hint_ms is None and not self.leaving:
            self.tally.error(f"close:{code}")
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(client_frame(CLOSE, close_payload(code)))
            self.transport.close()

    def _fail(self, error: Exception) -> None:
        self.tally.error(f"protocol:{type(error).__name__}")
        if self._ready is not None and not self._ready.done():
            self._ready.set_exception(error)
        self.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self._ready is not None and not self._ready.done():
            self._ready.set_exception(ConnectionError("closed during the opening"))
        if not self.up:
            return
        self.up = False
        self.tally.up -= 1
        if self.leaving:
            return
        if self.hint_ms is not None:
            self.tally.hinted_reconnects += 1
        else:
            self.tally.drops += 1
        if self.on_lost is not None:
            self.on_lost(self, self.hint_ms)

    def send(self, payload: bytes) -> None:
        if self.transport is not None:
            self.transport.write(client_frame(TEXT, payload))

    def ping(self) -> None:
        self._requests += 1
        self.send(_encode({"type": "ping", "id": self._requests}))

    def close(self, code: int = 1000) -> None:
        """A clean close: close frame, then the socket once written."""
        self.leaving = True
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(client_frame(CLOSE, close_payload(code)))
            self.transport.close()

    def abort(self) -> None:
        """Cut the link at once (RST), as a network drop would."""
        self.leaving = True
        if self.transport is not None:
            self.transport.abort()
