"""Helpers for tests: a raw envelope publisher and a recording WebSocket client."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import orjson
from nats.js.api import DiscardPolicy, StorageType, StreamConfig
from websockets.asyncio.client import ClientConnection, connect

from protocol import STREAM_NAME
from protocol.envelope import encode_envelope, message_id
from protocol.merge_patch import apply_patch
from protocol.topics import subject_for


async def create_stream(js, history: int = 1000) -> None:
    await js.add_stream(
        StreamConfig(
            name=STREAM_NAME,
            subjects=["scores.>"],
            storage=StorageType.FILE,
            discard=DiscardPolicy.OLD,
            max_msgs_per_subject=history,
            duplicate_window=120.0,
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
