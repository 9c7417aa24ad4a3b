"""The benchmark's load generator: one lean asyncio connection class that speaks
to every server under test, and the process that holds many of them.

Why not the ``websockets`` client: a generator that spends more CPU per
delivered message than the server measures itself, not the server (measured
in docs/BENCHMARKS.md). :class:`BenchConnection` is an ``asyncio.Protocol``:
it writes the upgrade request, reads unmasked server frames straight out of
``data_received`` and takes ``topic``, ``seq`` and ``ts`` out of a payload
with one regular expression instead of a JSON parser. Client frames
(subscribe, pong) are rare and masked with :func:`loadtest.frames.client_frame`.

Modes, one per server under test:

- ``scorecast``: ``GET /ws``, a ``subscribe`` frame; ready when every topic
  has had its ``snapshot``; ``event`` frames carry ``topic``, ``seq``, ``ts``.
- ``nats``: nats-server's WebSocket listener. After ``INFO`` the client
  sends ``CONNECT``, one ``SUB`` per topic and a ``PING``; ready at the
  ``PONG`` (every ``SUB`` processed). ``MSG`` payloads are the envelopes.
- ``naive``: ``GET /ws?topics=a,b``; ready at the server's ``subscribed``
  frame; frames are the envelopes as published. The floor server
  (:mod:`loadtest.bench_floor`) speaks the same.

:func:`generator_main` runs in a child process and obeys commands from the
parent over a pipe (see :class:`Command`), so the generator's CPU is its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import re
import resource
import socket
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

from scorecast.loadtest.frames import CLOSE, PING, TEXT, Handshake, client_frame
from scorecast.loadtest.histogram import LatencyHistogram

__all__ = ["MODES", "BenchConnection", "Command", "Tally", "generator_main"]

MODES = ("scorecast", "nats", "naive")
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)  # Linux 4.2+


class Command(enum.StrEnum):
    OPEN = "open"  # open connections; answer when all are ready (or failed)
    RESET = "reset"  # forget counters and latencies: a measured window starts
    EXPECT = "expect"  # wait until this many events arrived (or quiet / deadline)
    CLOSE = "close"  # close every connection
    EXIT = "exit"


class Tally:
    """What one generator process saw, shared by all its connections."""

    def __init__(self) -> None:
        self.reset()
        self.dropped = 0  # connections the server closed or reset while measured

    def reset(self) -> None:
        """A measured window starts: forget what was counted before it."""
        self.errors: dict[str, int] = {}
        self.received = 0  # events with seq beyond the connection's position
        self.duplicates = 0  # events at or behind the position
        self.gaps = 0  # events that skipped ahead
        self.first_at: float | None = None
        self.last_at = 0.0
        self.latency = LatencyHistogram()

    def error(self, what: str) -> None:
        self.errors[what] = self.errors.get(what, 0) + 1


# an event frame and an envelope both start topic, seq, ts in this order (msgspec and
# orjson write fields in declaration order, without spaces)
_EVENT = re.compile(rb'"topic":"([^"]*)","seq":(\d+),"ts":([-+.eE0-9]+)')
_SNAPSHOT = re.compile(rb'"topic":"([^"]*)","seq":(\d+)')


class BenchConnection(asyncio.Protocol):
    """One client WebSocket. Counts into the process's :class:`Tally`."""

    __slots__ = (
        "_buffer",
        "_handshake",
        "_nats",
        "_need",
        "mode",
        "positions",
        "ready",
        "ready_at",
        "resume",
        "snapshots",
        "started_at",
        "tally",
        "topics",
        "transport",
    )

    def __init__(
        self,
        mode: str,
        host: str,
        topics: list[str],
        tally: Tally,
        resume: dict[str, tuple[int, int]] | None = None,
    ) -> None:
        self.mode = mode
        self.topics = topics
        # reconnect scenario: per topic (since, head); ready once at head
        self.resume = resume
        self.tally = tally
        path = "/" if mode == "nats" else "/ws"
        if mode == "naive":
            path += "?topics=" + ",".join(topics)
        self._handshake: Handshake | None = Handshake(host, path)
        self._buffer = b""
        self._nats = b""
        self._need = -1
        self.transport: asyncio.Transport | None = None
        self.positions: dict[bytes, int] = {}
        if resume:
            self.positions = {topic.encode(): since for topic, (since, _) in resume.items()}
        self.snapshots = 0
        self.started_at = time.time()
        self.ready_at: float | None = None
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    # --- transport ------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.write(self._handshake.request)  # type: ignore[attr-defined]

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(f"closed before ready: {exc!r}"))
        elif self.transport is not None:
            self.tally.dropped += 1
        self.transport = None

    def close(self) -> None:
        if self.transport is not None:
            transport, self.transport = self.transport, None
            transport.abort()

    def _send(self, payload: bytes) -> None:
        if self.transport is not None:
            self.transport.write(client_frame(TEXT, payload))

    def _set_ready(self) -> None:
        if not self.ready.done():
            self.ready_at = time.time()
            self.ready.set_result(None)

    # --- frames ---------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self._handshake is not None:
            try:
                rest = self._handshake.receive(data)
            except Exception as exc:
                self.tally.error(f"handshake: {exc}"[:80])
                if not self.ready.done():
                    self.ready.set_exception(exc)
                self.close()
                return
            if rest is None:
                return
            self._handshake = None
            self._upgraded()
            data = rest
        if self._buffer:
            data = self._buffer + data
            self._buffer = b""
        now = time.time()
        size = len(data)
        position = 0
        while size - position >= 2:
            length = data[position + 1] & 0x7F
            head = 2
            if length == 126:
                if size - position < 4:
                    break
                length = int.from_bytes(data[position + 2 : position + 4], "big")
                head = 4
            elif length == 127:
                if size - position < 10:
                    break
                length = int.from_bytes(data[position + 2 : position + 10], "big")
                head = 10
            end = position + head + length
            if end > size:
                break
            opcode = data[position] & 0x0F
            payload = data[position + head : end]
            position = end
            if opcode == TEXT or opcode == 0x2:
                if self.mode == "nats":
                    self._nats_data(payload, now)
                else:
                    self._message(payload, now)
            elif opcode == PING:
                if self.transport is not None:
                    self.transport.write(client_frame(0xA, payload))
            elif opcode == CLOSE:
                self.close()
                return
        if position < size:
            self._buffer = data[position:]

    def _upgraded(self) -> None:
        if self.mode == "scorecast":
            topics = ",".join(f'"{topic}"' for topic in self.topics)
            since = b""
            if self.resume:
                pairs = ",".join(f'"{t}":{since}' for t, (since, _) in self.resume.items())
                since = b',"since":{' + pairs.encode() + b"}"
            self._send(
                b'{"type":"subscribe","id":1,"topics":[' + topics.encode() + b"]" + since + b"}"
            )
        elif self.mode == "naive":
            pass  # the topics were in the URL; wait for "subscribed"

    def _message(self, payload: bytes, now: float) -> None:
        """A scorecast frame or a naive server's frame."""
        if payload.startswith(b'{"type":"'):
            if payload.startswith(b'{"type":"event"'):
                self._event(payload, now)
            elif payload.startswith(b'{"type":"snapshot"'):
                match = _SNAPSHOT.search(payload)
                if match is None:
                    self.tally.error("unparsable snapshot")
                    return
                self.positions[match[1]] = int(match[2])
                self.snapshots += 1
                if self.resume:
                    self.tally.error("resumed with a snapshot, not a replay")
                if self.snapshots >= len(self.topics):
                    self._set_ready()
            elif payload.startswith(b'{"type":"subscribed"') and self.mode == "naive":
                self._set_ready()
            elif payload.startswith(b'{"type":"error"'):
                self.tally.error(payload[:80].decode("utf-8", "replace"))
        else:
            self._event(payload, now)

    def _event(self, payload: bytes, now: float) -> None:
        match = _EVENT.search(payload)
        tally = self.tally
        if match is None:
            tally.error("unparsable event")
            return
        topic, seq, ts = match[1], int(match[2]), float(match[3])
        position = self.positions.get(topic, 0)
        if seq <= position:
            tally.duplicates += 1
            return
        if seq > position + 1:
            tally.gaps += 1
        self.positions[topic] = seq
        if self.resume and not self.ready.done() and self._replayed():
            self._set_ready()
        tally.received += 1
        tally.last_at = now
        if tally.first_at is None:
            tally.first_at = now
        tally.latency.record(now - ts)

    def _replayed(self) -> bool:
        assert self.resume is not None
        positions = self.positions
        return all(positions.get(t.encode(), 0) >= head for t, (_, head) in self.resume.items())

    # --- NATS protocol over the WebSocket ----------------------------------------

    def _nats_data(self, payload: bytes, now: float) -> None:
        data = self._nats + payload if self._nats else payload
        size = len(data)
        position = 0
        while position < size:
            if self._need >= 0:
                end = position + self._need
                if end + 2 > size:
                    break
                self._event(data[position:end], now)
                position = end + 2
                self._need = -1
                continue
            line_end = data.find(b"\r\n", position)
            if line_end < 0:
                break
            line = data[position:line_end]
            position = line_end + 2
            if line.startswith(b"MSG "):
                self._need = int(line[line.rindex(b" ") + 1 :])
            elif line == b"PING":
                self._send(b"PONG\r\n")
            elif line == b"PONG":
                self._set_ready()
            elif line.startswith(b"INFO "):
                subs = b"".join(
                    b"SUB scores.%s %d\r\n" % (topic.encode(), sid)
                    for sid, topic in enumerate(self.topics, 1)
                )
                connect = b'CONNECT {"verbose":false,"pedantic":false}\r\n'
                self._send(connect + subs + b"PING\r\n")
            elif line.startswith(b"-ERR"):
                self.tally.error(line[:80].decode("utf-8", "replace"))
        self._nats = data[position:] if position < size else b""


# --- the generator process ------------------------------------------------------------


class Generator:
    """Connections of one process and the commands that drive them."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.tally = Tally()
        self.connections: list[BenchConnection] = []

    async def open(
        self,
        mode: str,
        host: str,
        port: int,
        plan: list[list[str]],
        window: int,
        timeout: float,
        resume: dict[str, tuple[int, int]] | None = None,
    ) -> dict[str, Any]:
        """Open one connection per topic list in ``plan``, ``window`` at a time;
        with ``resume`` (topic -> since, head) each subscribes with ``since``
        and is ready once replayed up to ``head``."""
        loop = asyncio.get_running_loop()
        slots = asyncio.Semaphore(max(1, window))
        authority = f"{host}:{port}"
        waits: list[float] = []
        began = time.time()

        async def one(topics: list[str]) -> None:
            async with slots:
                connection = BenchConnection(mode, authority, topics, self.tally, resume)
                try:
                    async with asyncio.timeout(timeout):
                        sock = await self._dial(host, port)
                        await loop.create_connection(lambda: connection, sock=sock)
                        await connection.ready
                except Exception as exc:  # refused, reset, timed out, bad handshake
                    self.tally.error(type(exc).__name__)
                    connection.close()
                    return
                self.connections.append(connection)
                waits.append(connection.ready_at - connection.started_at)

        await asyncio.gather(*(one(topics) for topics in plan))
        return {
            "opened": len(waits),
            "failed": len(plan) - len(waits),
            "errors": dict(self.tally.errors),
            "began": began,
            "ended": max((c.ready_at or began) for c in self.connections) if waits else began,
            "ready_seconds": waits,
        }

    async def _dial(self, host: str, port: int) -> socket.socket:
        """A socket connected from this process's source address.

        ``IP_BIND_ADDRESS_NO_PORT`` defers the choice of the local port to
        ``connect()``: a plain ``bind((source, 0))`` searches the bound ports
        one by one, which makes opening 10,000 connections quadratic in
        kernel time (and the generator, not the server, the bottleneck).
        """
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
            sock.bind((self.source, 0))
            await asyncio.get_running_loop().sock_connect(sock, (host, port))
        except BaseException:
            sock.close()
            raise
        return sock

    async def expect(self, published: dict[str, int], deadline: float, quiet: float) -> dict:
        """Wait until every connection has every event ``published`` (topic -> count)
        on its topics, or for ``quiet`` seconds without one, or ``deadline``."""
        tally = self.tally
        expected = sum(
            published.get(topic, 0)
            for connection in self.connections
            for topic in connection.topics
        )
        stop_at = time.monotonic() + deadline
        last_count, last_change = -1, time.monotonic()
        ended = "all"
        while tally.received < expected:
            if time.monotonic() > stop_at:
                ended = "deadline"
                break
            if tally.received != last_count:
                last_count, last_change = tally.received, time.monotonic()
            elif time.monotonic() - last_change > quiet:
                ended = "quiet"
                break
            await asyncio.sleep(0.02)
        return {
            "expected": expected,
            "received": tally.received,
            "ended": ended,
            "duplicates": tally.duplicates,
            "gaps": tally.gaps,
            "first_at": tally.first_at,
            "last_at": tally.last_at,
            "latency": tally.latency.to_dict(),
            "dropped": tally.dropped,
            "errors": dict(tally.errors),
        }

    def close(self) -> int:
        count = len(self.connections)
        for connection in self.connections:
            connection.close()
        self.connections = []
        self.tally = Tally()  # the next scenario counts from zero
        return count


async def _serve(pipe: Connection, source: str) -> None:
    generator = Generator(source)
    handlers: dict[str, Callable[..., Any]] = {
        Command.OPEN: generator.open,
        Command.EXPECT: generator.expect,
    }
    while True:
        # a blocking read in a thread: the pipe must stay blocking (a plan is a large
        # message), and the loop keeps serving the connections meanwhile
        try:
            command, arguments = await asyncio.to_thread(pipe.recv)
        except EOFError:  # the parent is gone
            command, arguments = Command.EXIT, {}
        if command == Command.EXIT:
            generator.close()
            return
        if command == Command.RESET:
            generator.tally.reset()
            pipe.send(None)
        elif command == Command.CLOSE:
            pipe.send(generator.close())
        else:
            pipe.send(await handlers[command](**arguments))


def generator_main(pipe: Connection, source: str) -> None:
    """Entry point of one generator process (``multiprocessing`` target)."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    try:
        import uvloop

        uvloop.run(_serve(pipe, source))
    except ImportError:  # pragma: no cover - uvloop is a dependency on POSIX
        asyncio.run(_serve(pipe, source))
    except KeyboardInterrupt:
        pass
