"""Helpers for tests: a raw envelope publisher and a recording WebSocket client."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from typing import Any

import orjson
from nats.js.api import DiscardPolicy, RePublish, StorageType, StreamConfig
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import ClientConnection, connect

from scorecast.protocol import COMMITTED_PREFIX, STREAM_NAME
from scorecast.protocol.envelope import encode_envelope, message_id
from scorecast.protocol.merge_patch import apply_patch
from scorecast.protocol.topics import subject_for


async def create_stream(js, history: int = 1000) -> None:
    await js.add_stream(
        StreamConfig(
            name=STREAM_NAME,
            subjects=["scores.>"],
            storage=StorageType.FILE,
            discard=DiscardPolicy.OLD,
            max_msgs_per_subject=history,
            duplicate_window=120.0,
            republish=RePublish(src="scores.>", dest=COMMITTED_PREFIX + ">"),
        )
    )


class RawPublisher:
    """Publishes envelopes exactly as told, to craft gaps and duplicates."""

    def __init__(self, js) -> None:
        self.js = js
        self.states: dict[str, Any] = {}
        self.seqs: dict[str, int] = {}

    async def publish(self, topic: str, patch: dict, kind: str = "update", seq: int | None = None):
        seq = seq or self.seqs.get(topic, 0) + 1
        state = apply_patch(self.states.get(topic), patch)
        self.states[topic], self.seqs[topic] = state, seq
        body = encode_envelope(topic, seq, time.time(), kind, patch, state)
        await self.js.publish(
            subject_for(topic), body, headers={"Nats-Msg-Id": message_id(topic, seq)}
        )
        return seq


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
        deadline = time.monotonic() + timeout
        seen = 0
        while True:
            for message in self.messages[seen:]:
                if predicate(message):
                    return message
            seen = len(self.messages)
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self._reader.done():
                raise TimeoutError(f"no matching message; got {self.messages[-5:]}")
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), remaining)

    def of(self, topic: str) -> list[dict]:
        return [m for m in self.messages if m.get("topic") == topic]

    async def close(self) -> None:
        await self.ws.close()
        await asyncio.wait_for(self._reader, 5)

    @property
    def close_code(self) -> int | None:
        return self.ws.close_code


def check_sequence(messages: list[dict]) -> int:
    """Assert the contract's ordering for one topic's frames; return last seq."""
    position = None
    for message in messages:
        if message["type"] == "snapshot":
            position = message["seq"]
        else:
            assert message["type"] == "event", message
            assert position is not None, "an event before any snapshot"
            assert message["seq"] == position + 1, f"expected {position + 1}, got {message}"
            position = message["seq"]
    return position


def ws_url(gateway, query: str = "") -> str:
    return f"ws://127.0.0.1:{gateway.port}/ws{query}"


class RawClient:
    """A WebSocket client on a bare socket that reads only when told to, with
    a tiny receive buffer: the slow phone on a bad network."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.messages: list[dict] = []
        self.close_code: int | None = None

    @classmethod
    async def open(cls, port: int, receive_buffer: int = 4096) -> RawClient:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
        # a small limit: the reader stops taking bytes off the socket when not read
        reader, writer = await asyncio.open_connection(sock=sock, limit=2**14)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(
            (
                f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101"), head
        return cls(reader, writer)

    async def send(self, message: dict) -> None:
        await self.send_frame(0x1, orjson.dumps(message))

    async def send_frame(self, opcode: int, payload: bytes) -> None:
        """One masked frame with any opcode and payload, valid or not."""
        mask = os.urandom(4)
        masked = bytes(byte ^ mask[index % 4] for index, byte in enumerate(payload))
        size = len(payload)
        if size < 126:
            header = bytes((0x80 | opcode, 0x80 | size))
        elif size < 65536:
            header = bytes((0x80 | opcode, 0x80 | 126)) + size.to_bytes(2)
        else:
            header = bytes((0x80 | opcode, 0x80 | 127)) + size.to_bytes(8)
        self.writer.write(header + mask + masked)
        await self.writer.drain()

    async def read_frame(self) -> dict | None:
        """The next data frame as JSON; None once a close frame arrived."""
        first, second = await self.reader.readexactly(2)
        size = second & 0x7F
        if size == 126:
            size = int.from_bytes(await self.reader.readexactly(2))
        elif size == 127:
            size = int.from_bytes(await self.reader.readexactly(8))
        payload = await self.reader.readexactly(size)
        if first & 0x0F == 0x8:
            self.close_code = int.from_bytes(payload[:2]) if len(payload) >= 2 else 1005
            with contextlib.suppress(ConnectionError):  # answer it, as clients must
                await self.send_frame(0x8, payload[:2])
            return None
        if first & 0x0F != 0x1:
            return await self.read_frame()  # a ping: not a message
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
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
        text = answer.read().decode()
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if not sample.labels
    }


def start_gateway(nats_url: str, port: int, *extra: str) -> subprocess.Popen:
    """`scorecast gateway` as a real process; returns once /readyz says 200."""
    process = subprocess.Popen(
        [sys.executable, "-m", "scorecast.cli", "--log-level", "warning", "gateway",
         "--nats", nats_url, "--port", str(port), *extra],
    )  # fmt: skip
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as answer:
                if answer.status == 200:
                    return process
        except OSError:
            time.sleep(0.1)
    process.kill()
    raise TimeoutError("gateway did not become ready")
