"""The broker port: what the node needs from NATS / JetStream, and what the
broker tells the node.

:class:`gateway.broker_nats.NatsBroker` is the real implementation, tested
against a real nats-server; :class:`gateway.broker_memory.MemoryBroker`
keeps the stream in memory, for the core's tests.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol

from scorecast.protocol.envelope import Envelope

__all__ = ["Broker", "BrokerEvents", "MessageHandler"]

MessageHandler = Callable[[str, bytes], None]


class Broker(Protocol):
    @property
    def connected(self) -> bool: ...

    async def subscribe(self, topic: str) -> None:
        """Start live delivery of ``topic`` to the message handler."""

    async def unsubscribe(self, topic: str) -> None: ...

    async def latest(self, topic: str) -> Envelope | None:
        """The topic's newest stored envelope (its snapshot), None if none."""

    async def fetch(self, topic: str, first: int, last: int | None) -> list[Envelope]:
        """Stored envelopes of ``topic`` with ``first <= seq <= last``, in order."""


class BrokerEvents(Protocol):
    """The callbacks a broker makes, from inside its client library's own
    loop: each only schedules work and returns at once (no awaiting)."""

    def on_message(self, topic: str, body: bytes) -> None:
        """A live message of a subscribed topic, in the subscription's order."""

    def resync(self, topic: str | None) -> Awaitable[None] | None:
        """Messages may have been missed (a reconnect: None; one topic dropped)."""

    def stream_reset(self) -> None:
        """The stream was recreated: positions held so far mean nothing."""
