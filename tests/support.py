"""Helpers for tests: a raw envelope publisher and a recording WebSocket client."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import socket
import subprocess
import time

import orjson
from websockets.asyncio.client import ClientConnection, connect

from scorecast.loadtest import stack
from scorecast.loadtest.frames import CLOSE, TEXT, FrameReader, Handshake, client_frame, parse_close
from scorecast.loadtest.publisher import Envelopes
from scorecast.loadtest.stack import metrics_of
from scorecast.loadtest.tracker import Arrival, Positions
from scorecast.publishers.stream import ensure_stream


async def create_stream(js, history: int = 1000) -> None:
    """The SCORES stream, created as publishers create it (their own code)."""
    await ensure_stream(js, history=history)


class RawPublisher:
    """Publishes envelopes exactly as told, to craft gaps and duplicates."""

    def __init__(self, js) -> None:
        self.js = js
        self.envelopes = Envelopes()
        self.states, self.seqs = self.envelopes.states, self.envelopes.seqs

    async def publish(self, topic: str, patch: dict, kind: str = "update", seq: int | None = None):
        subject, body, headers = self.envelopes.next(topic, patch, kind, seq=seq)
        await self.js.publish(subject, body, headers=headers)
        return self.seqs[topic]


async def first_match(messages: list, predicate, arrived: asyncio.Event, ended, timeout: float,
                      wake: float | None = None):  # fmt: skip
    """The first of ``messages`` (a list a reader appends to, setting ``arrived``)
    matching ``predicate``; TimeoutError after ``timeout`` or once ``ended()``.
    ``wake``: look again at least this often, even without ``arrived``."""
    deadline = time.monotonic() + timeout
    seen = 0
    while True:
        for message in messages[seen:]:
            if predicate(message):
                return message
        seen = len(messages)
        remaining = deadline - time.monotonic()
        if remaining <= 0 or ended():
            raise TimeoutError(f"no matching message; got {messages[-5:]}")
        arrived.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(arrived.wait(), min(remaining, wake or remaining))


class Recorder:
    """A WebSocket client that records every frame it gets."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.messages: list[dict] = []
        self._arrived = asyncio.Event()
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def open(cls, url: str, **kwargs) -> Recorder:
        return cls(await connect(url, **kwargs))

    async def _read(self) -> None:
        try:
            async for frame in self.ws:
                self.messages.append(orjson.loads(frame))
                self._arrived.set()
        except Exception:
            pass
        finally:
            self._arrived.set()

    async def send(self, message: dict | str | bytes) -> None:
        if isinstance(message, dict):
            message = orjson.dumps(message).decode()
        await self.ws.send(message)

    async def wait_for(self, predicate, timeout: float = 10.0) -> dict:
        """The first recorded message matching ``predicate`` (waits for it)."""
        return await first_match(
            self.messages, predicate, self._arrived, self._reader.done, timeout
        )

    def of(self, topic: str) -> list[dict]:
        return [m for m in self.messages if m.get("topic") == topic]

    async def close(self) -> None:
        await self.ws.close()
        await asyncio.wait_for(self._reader, 5)

    @property
    def close_code(self) -> int | None:
        return self.ws.close_code


def check_sequence(messages: list[dict]) -> int | None:
    """Assert the contract's ordering for one topic's frames (the load tools'
    own checker, :class:`~scorecast.loadtest.tracker.Positions`); return the last seq."""
    positions, position = Positions(), None
    for message in messages:
        topic, position = message["topic"], message["seq"]
        if message["type"] == "snapshot":
            positions.snapshot(topic, position)
        else:
            assert message["type"] == "event", message
            verdict = positions.event(topic, position)
            assert verdict is Arrival.OK, f"{verdict.value}: {message} after {positions.seqs}"
    return position


def ws_url(gateway, query: str = "") -> str:
    return f"ws://127.0.0.1:{gateway.port}/ws{query}"


class RawClient:
    """A WebSocket client on a bare socket that reads only when told to, with
    a tiny receive buffer: the slow phone on a bad network. Framing is the load
    tools' own (:mod:`scorecast.loadtest.frames`)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.messages: list[dict] = []
        self.close_code: int | None = None
        self._frames = FrameReader(max_size=1 << 24)
        self._unread: collections.deque[tuple[int, bytes]] = collections.deque()

    @classmethod
    async def open(cls, port: int, receive_buffer: int = 4096) -> RawClient:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
        # a small limit: the reader stops taking bytes off the socket when not read
        reader, writer = await asyncio.open_connection(sock=sock, limit=2**14)
        handshake = Handshake(f"127.0.0.1:{port}")
        writer.write(handshake.request)
        rest = None
        while rest is None:
            data = await reader.read(4096)
            if not data:
                raise ConnectionError("closed during the handshake")
            rest = handshake.receive(data)
        client = cls(reader, writer)
        client._unread.extend(client._frames.feed(rest))
        return client

    async def send(self, message: dict) -> None:
        await self.send_frame(TEXT, orjson.dumps(message))

    async def send_frame(self, opcode: int, payload: bytes) -> None:
        """One masked frame with any opcode and payload, valid or not."""
        self.writer.write(client_frame(opcode, payload))
        await self.writer.drain()

    async def read_frame(self) -> dict | None:
        """The next data frame as JSON; None once a close frame arrived."""
        while True:
            while not self._unread:
                data = await self.reader.read(2**16)
                if not data:
                    raise asyncio.IncompleteReadError(b"", None)
                self._unread.extend(self._frames.feed(data))
            opcode, payload = self._unread.popleft()
            if opcode == CLOSE:
                self.close_code = parse_close(payload)[0]
                with contextlib.suppress(ConnectionError):  # answer it, as clients must
                    await self.send_frame(CLOSE, payload[:2])
                return None
            if opcode == TEXT:  # not a ping: a message
                message = orjson.loads(payload)
                self.messages.append(message)
                return message

    async def read_until(self, predicate, timeout: float = 30.0) -> dict | None:
        async with asyncio.timeout(timeout):
            while True:
                message = await self.read_frame()
                if message is None or predicate(message):
                    return message

    def of(self, topic: str) -> list[dict]:
        return [m for m in self.messages if m.get("topic") == topic]

    def close(self) -> None:
        self.writer.close()


def scrape_metrics(port: int) -> dict[str, float]:
    """A gateway's /metrics, parsed with prometheus-client's own parser
    (unlabelled samples only)."""
    return {name: value for name, value in metrics_of(port).items() if "{" not in name}


def start_gateway(nats_url: str, port: int, *extra: str) -> subprocess.Popen:
    """`scorecast gateway` as a real process; returns once /readyz says 200."""
    return stack.start_gateway(nats_url, port, extra=extra, timeout=20)
