"""Occupancy (PROTOCOL.md section 3): how many subscriptions a topic has on
every gateway of the same NATS. Sans-I/O: times are passed in, nothing here
sends or receives.

- :class:`Reporter` turns this node's per-topic counts into its report for one
  interval: every topic it holds, plus a 0 for each topic it stopped holding
  since the previous report. One report per node per interval, whatever the
  number of clients.
- :class:`Fleet` keeps the newest report of every other node and their sum per
  topic. A report replaces the node's previous one whole; a node that has not
  reported for ``EXPIRY_INTERVALS`` of its own intervals drops out of the sum.
- :class:`Watchers` remembers which connections asked for occupancy of which
  topic and decides who is owed a frame: only on change, and at most once per
  ``min_gap`` seconds per topic per connection. Connections that were last
  told the same value at the same time form a cohort, so a change costs one
  step per cohort plus the sends, never a scan of every watcher per tick.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Generic, TypeVar

__all__ = ["EXPIRY_INTERVALS", "MIN_GAP", "Fleet", "Reporter", "Watchers"]

EXPIRY_INTERVALS = 3
MIN_GAP = 2.0
_NEVER = (-1, float("-inf"))  # the cohort of watchers told nothing yet
C = TypeVar("C", bound=Hashable)  # a connection, whatever the transport


class Reporter:
    """This node's report per interval: held topics, and zeros for those left."""

    def __init__(self) -> None:
        self.previous: dict[str, int] = {}

    def report(self, counts: Mapping[str, int]) -> dict[str, int]:
        held = {topic: count for topic, count in counts.items() if count > 0}
        report = dict(held)
        for topic in self.previous:
            if topic not in held:
                report[topic] = 0
        self.previous = held
        return report


class Fleet:
    """The other nodes' newest reports and their sum per topic."""

    def __init__(self, node: str, expiry_intervals: int = EXPIRY_INTERVALS) -> None:
        self.node = node
        self.expiry_intervals = expiry_intervals
        # node -> (report expires at, its non-zero counts)
        self.reports: dict[str, tuple[float, dict[str, int]]] = {}
        self.totals: dict[str, int] = {}

    def report(self, node: str, counts: Mapping[str, int], interval: float, now: float) -> None:
        """``node``'s report replaces its previous one (our own is ignored:
        this node counts its own subscriptions live)."""
        if node == self.node:
            return
        held = {topic: count for topic, count in counts.items() if count > 0}
        self._remove(node)
        self.reports[node] = (now + self.expiry_intervals * max(interval, 0.01), held)
        totals = self.totals
        for topic, count in held.items():
            totals[topic] = totals.get(topic, 0) + count

    def expire(self, now: float) -> list[str]:
        """Drop nodes that stopped reporting; their names."""
        gone = [node for node, (expires, _) in self.reports.items() if expires < now]
        for node in gone:
            self._remove(node)
        return gone

    def remote(self, topic: str) -> int:
        """Subscriptions to ``topic`` on the other nodes."""
        return self.totals.get(topic, 0)

    def _remove(self, node: str) -> None:
        previous = self.reports.pop(node, None)
        if previous is None:
            return
        totals = self.totals
        for topic, count in previous[1].items():
            left = totals.get(topic, 0) - count
            if left > 0:
                totals[topic] = left
            else:
                totals.pop(topic, None)


class Watchers(Generic[C]):
    """Who asked for occupancy of which topic, and what each was last told."""

    def __init__(self, min_gap: float = MIN_GAP) -> None:
        self.min_gap = min_gap
        # topic -> cohort (value told, when) -> connections
        self.cohorts: dict[str, dict[tuple[int, float], set[C]]] = {}
        # topic -> connection -> its cohort
        self.keys: dict[str, dict[C, tuple[int, float]]] = {}

    def watch(self, connection: C, topic: str) -> None:
        """Start occupancy of ``topic`` (asking again changes nothing: the
        gap between two frames holds across a resubscribe)."""
        keys = self.keys.get(topic)
        if keys is not None and connection in keys:
            return
        self.cohorts.setdefault(topic, {}).setdefault(_NEVER, set()).add(connection)
        self.keys.setdefault(topic, {})[connection] = _NEVER

    def forget(self, connection: C, topic: str) -> None:
        keys = self.keys.get(topic)
        if not keys or connection not in keys:
            return
        key = keys.pop(connection)
        cohorts = self.cohorts[topic]
        cohort = cohorts[key]
        cohort.discard(connection)
        if not cohort:
            del cohorts[key]
        if not keys:
            del self.keys[topic], self.cohorts[topic]

    def topics(self) -> list[str]:
        return list(self.keys)

    def watching(self, connection: C, topic: str) -> bool:
        return connection in self.keys.get(topic, ())

    def due(self, topic: str, total: int, now: float) -> list[C]:
        """The connections to tell ``total`` now (they are then recorded as
        told): those told another value at least ``min_gap`` seconds ago, and
        those told nothing yet."""
        cohorts = self.cohorts.get(topic)
        if not cohorts:
            return []
        gap = self.min_gap
        ready = [key for key in cohorts if key[0] != total and now - key[1] >= gap]
        if not ready:
            return []
        owed: list[C] = []
        for key in ready:
            owed.extend(cohorts.pop(key))
        told = (total, now)
        cohorts.setdefault(told, set()).update(owed)
        keys = self.keys[topic]
        for connection in owed:
            keys[connection] = told
        return owed
