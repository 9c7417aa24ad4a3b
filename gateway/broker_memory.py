"""The broker port in memory: one list of stored envelopes per topic, for
the core's tests and for anything that wants a gateway without NATS.

What a test does to the world goes through plain methods: :meth:`publish`
stores an envelope (and hands it to the live handler unless told not to),
:meth:`reset` recreates the stream, :meth:`reconnect` reports a reconnect.
The async methods are the :class:`gateway.broker.Broker` port.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from scorecast.gateway.broker import MessageHandler
from scorecast.protocol.envelope import Envelope, decode_envelope, encode_envelope
from scorecast.protocol.merge_patch import apply_patch

__all__ = ["MemoryBroker"]


class MemoryBroker:
    def __init__(
        self,
        on_message: MessageHandler | None = None,
        *,
        on_resync: Callable[[str | None], Any] | None = None,
        on_stream_reset: Callable[[], None] | None = None,
        keep: int | None = None,
    ) -> None:
        self.on_message = on_message
        self.on_resync = on_resync
        self.on_stream_reset = on_stream_reset
        self.keep = keep  # stored messages per topic (the stream's max_msgs_per_subject)
        self.stored: dict[str, list[Envelope]] = {}
        self.heads: dict[str, int] = {}
        self.states: dict[str, Any] = {}  # each topic's newest state, decoded
        self.subscriptions: set[str] = set()
        self.connected = True
        self.epoch = 0
        self.reconnects = 0

    # --- the world ------------------------------------------------------------

    def publish(self, topic: str, data: Any, kind: str = "k", *, deliver: bool = True) -> bytes:
        """Store the next event of ``topic``; its body, handed to the live
        handler when ``deliver`` and the topic is subscribed."""
        seq = self.heads.get(topic, 0) + 1
        stored = self.stored.setdefault(topic, [])
        state = apply_patch(self.states.get(topic), data)
        self.states[topic] = state
        ts = self.epoch * 1_000_000.0 + seq  # a publisher's clock: later after a reset
        body = encode_envelope(topic, seq, ts, kind, data, state)
        stored.append(decode_envelope(body))
        if self.keep is not None and len(stored) > self.keep:
            del stored[0]
        self.heads[topic] = seq
        if deliver and topic in self.subscriptions and self.on_message is not None:
            self.on_message(topic, body)
        return body

    def reset(self) -> None:
        """The stream is deleted and created again: every topic starts over."""
        self.stored.clear()
        self.heads.clear()
        self.states.clear()
        self.epoch += 1
        if self.on_stream_reset is not None:
            self.on_stream_reset()

    def reconnect(self) -> None:
        self.reconnects += 1
        if self.on_resync is not None:
            self.on_resync(None)

    def newest(self, topic: str) -> Envelope | None:
        stored = self.stored.get(topic)
        return stored[-1] if stored else None

    def read(self, topic: str, first: int, last: int | None) -> list[Envelope]:
        return [
            envelope
            for envelope in self.stored.get(topic, ())
            if envelope.seq >= first and (last is None or envelope.seq <= last)
        ]

    # --- the port -------------------------------------------------------------

    async def subscribe(self, topic: str) -> None:
        self.subscriptions.add(topic)

    async def unsubscribe(self, topic: str) -> None:
        self.subscriptions.discard(topic)

    async def latest(self, topic: str) -> Envelope | None:
        return self.newest(topic)

    async def fetch(self, topic: str, first: int, last: int | None) -> list[Envelope]:
        return self.read(topic, first, last)
