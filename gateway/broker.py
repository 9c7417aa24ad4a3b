"""The broker port: what the node needs from NATS / JetStream.

:class:`gateway.broker_nats.NatsBroker` is the real implementation, tested
against a real nats-server.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from protocol.envelope import Envelope

__all__ = ["Broker", "MessageHandler"]

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
