"""Occupancy over NATS: the thin adapter around :mod:`gateway.occupancy`.

Each gateway node publishes one report per interval on
``scorecast.occupancy.<node>``::

    {"node": "gw-1", "interval": 1.0, "counts": {"match.4711": 812, "match.9": 0}}

(every topic it holds, and a 0 for each topic it stopped holding since the
previous report), and follows ``scorecast.occupancy.>`` to sum the fleet's.
It uses the node's own NATS connection (``node.broker.nc``). Every
``TICK`` seconds it tells the connections that asked for occupancy whatever
changed, one frame encoded per topic and shared. When the gateway stops it
publishes an empty report, so the others drop it at once rather than after
``EXPIRY_INTERVALS`` intervals.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from typing import TYPE_CHECKING, Any, Protocol

import msgspec

from scorecast.gateway.occupancy import Fleet, Reporter, Watchers
from scorecast.protocol.codec import encode, text_frame
from scorecast.protocol.messages import Occupancy

if TYPE_CHECKING:
    from scorecast.gateway.auth import Grant
    from scorecast.gateway.node import Node

__all__ = ["OCCUPANCY_PREFIX", "OccupancyService", "subject_name"]

log = logging.getLogger("scorecast.occupancy")

OCCUPANCY_PREFIX = "scorecast.occupancy."
TICK = 0.25


class _Report(msgspec.Struct):
    node: str
    interval: float
    counts: dict[str, int]


_decode_report = msgspec.json.Decoder(_Report).decode
_encode = msgspec.json.Encoder().encode


def subject_name(node: str) -> str:
    """A node name as one NATS subject token."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", node) or "node"


class Watcher(Protocol):
    """A connection that can ask for occupancy (WebSocket or SSE)."""

    @property
    def closed(self) -> bool: ...
    @property
    def grant(self) -> Grant: ...
    def __hash__(self) -> int: ...


class OccupancyService:
    def __init__(self, node: Node, name: str, interval: float) -> None:
        self.node = node
        self.name = subject_name(name)
        self.interval = interval
        self.fleet = Fleet(self.name)
        self.reporter = Reporter()
        self.watchers: Watchers[Watcher] = Watchers()
        self.reports_published = 0
        self.reports_received = 0
        self._subscription: Any = None
        self._task: asyncio.Task[None] | None = None

    # --- what the transports call -------------------------------------------

    def watch(self, connection: Watcher, topics: list[str], wanted: bool = True) -> None:
        """``connection`` (un)subscribed ``topics`` with or without occupancy.
        (Connections that leave are forgotten lazily, when next owed a frame.)"""
        watchers = self.watchers
        for topic in topics:
            if wanted and connection.grant.allows(topic):
                watchers.watch(connection, topic)
            elif watchers.watching(connection, topic):
                watchers.forget(connection, topic)

    def count(self, topic: str) -> int:
        """Subscriptions to ``topic`` on every gateway: ours live, others as reported."""
        held = self.node.hub.topic(topic)
        return (len(held.holders) if held is not None else 0) + self.fleet.remote(topic)

    def figures(self) -> dict[str, int]:
        return {
            "occupancy_reports_published": self.reports_published,
            "occupancy_reports_received": self.reports_received,
            "occupancy_nodes": len(self.fleet.reports) + 1,
        }

    # --- lifecycle ----------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        nc = self._nc()
        if nc is not None:
            with contextlib.suppress(Exception):  # a goodbye: the others drop us now
                await nc.publish(OCCUPANCY_PREFIX + self.name, self._encode_report({}))
                await nc.flush(timeout=1)

    def _nc(self) -> Any:
        nc = getattr(self.node.broker, "nc", None)
        return nc if nc is not None and nc.is_connected else None

    async def _run(self) -> None:
        next_report = 0.0
        failing = False
        while True:
            await asyncio.sleep(TICK)
            now = time.monotonic()
            try:
                nc = self._nc()
                if nc is not None:
                    if self._subscription is None:
                        self._subscription = await nc.subscribe(
                            OCCUPANCY_PREFIX + ">", cb=self._received
                        )
                    if now >= next_report:  # on a fixed cadence, not drifting by ticks
                        next_report = max(next_report + self.interval, now)
                        await self._publish(nc)
                failing = False
            except Exception as exc:  # NATS trouble: counts go stale, clients stay
                if not failing:
                    log.warning("occupancy report failed: %r", exc)
                failing = True
            self.fleet.expire(now)
            self._notify(now)

    async def _publish(self, nc: Any) -> None:
        hub = self.node.hub
        counts = {name: len(topic.holders) for name, topic in hub.topics.items()}
        await nc.publish(OCCUPANCY_PREFIX + self.name, self._encode_report(counts))
        self.reports_published += 1

    def _encode_report(self, counts: dict[str, int]) -> bytes:
        report = self.reporter.report(counts)
        return _encode(_Report(node=self.name, interval=self.interval, counts=report))

    async def _received(self, msg: Any) -> None:
        try:
            report = _decode_report(msg.data)
        except msgspec.MsgspecError:
            return
        self.reports_received += 1
        self.fleet.report(report.node, report.counts, report.interval, time.monotonic())

    def _notify(self, now: float) -> None:
        """Tell each watcher what changed: one frame per topic, shared."""
        hub, send = self.node.hub, self.node.send
        for topic in self.watchers.topics():
            total = self.count(topic)
            owed = self.watchers.due(topic, total, now)
            if not owed:
                continue
            frame = text_frame(encode(Occupancy(topic=topic, subscribers=total, ts=time.time())))
            for connection in owed:
                if connection.closed or not hub.holds(connection, topic):
                    self.watchers.forget(connection, topic)
                else:
                    send(connection, frame)
