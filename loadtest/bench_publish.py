"""Events for the benchmark: envelopes on JetStream at a steady rate.

Every event is a real envelope (PROTOCOL.md section 2) with ``ts`` set to
``time.time()`` just before it is published, so each client computes
publish-to-receive latency from the payload it gets. Events go out as core
publishes on ``scores.<topic>`` (the ``SCORES`` stream captures them, with a
``Nats-Msg-Id``): one connection and no per-event acknowledgement keep
every topic's order exact and the publisher's pace steady at high rates.
"""

from __future__ import annotations

import asyncio
import time

from scorecast.loadtest.publisher import Envelopes

__all__ = ["BenchPublisher"]


class BenchPublisher:
    """Next envelope per topic: ``seq`` 1, 2, 3... and a state of about ``state_bytes``."""

    def __init__(self, nc, state_bytes: int = 120) -> None:
        self.nc = nc
        self.envelopes = Envelopes()
        self.padding = "x" * max(0, state_bytes - 60)

    def _next(self, topic: str) -> tuple[str, bytes, dict[str, str]]:
        seq = self.envelopes.seqs.get(topic, 0) + 1
        patch = {"minute": seq % 90, "home": seq % 7}
        return self.envelopes.next(topic, patch, state={**patch, "away": 1, "note": self.padding})

    async def publish(self, topic: str) -> None:
        subject, body, headers = self._next(topic)
        await self.nc.publish(subject, body, headers=headers)

    async def stored(self, topic: str) -> None:
        """Publish one event and wait until JetStream has stored it (a snapshot to load)."""
        subject, body, headers = self._next(topic)
        await self.nc.jetstream().publish(subject, body, headers=headers)

    async def run(self, plan: list[str], rate: float) -> tuple[float, float]:
        """Publish one event per topic in ``plan``, ``rate`` per second (0: at once).

        Returns wall-clock times of the first and the last publish.
        """
        first = time.time()
        started = time.perf_counter()
        for index, topic in enumerate(plan):
            if rate > 0:
                delay = started + index / rate - time.perf_counter()
                if delay > 0.0005:
                    await asyncio.sleep(delay)
            await self.publish(topic)
        last = time.time()
        await self.nc.flush()
        return first, last
