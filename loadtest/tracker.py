"""Checks the delivery guarantee (PROTOCOL.md section 4) for one connection.

Sans-I/O. Feed it every ``snapshot`` and ``event`` frame; it keeps each
topic's position across reconnects (which is what ``since`` is built from)
and names each violation: an event before any snapshot, a gap, a duplicate,
or a step backwards.
"""

from __future__ import annotations

import enum

__all__ = ["Positions", "Verdict"]


class Verdict(enum.Enum):
    OK = "ok"
    NO_SNAPSHOT = "no_snapshot"  # an event on a topic that never had a starting point
    GAP = "gap"  # seq jumped past previous + 1
    DUPLICATE = "duplicate"  # seq equal to the position
    BACKWARDS = "backwards"  # seq below the position


class Positions:
    """Topic -> last seq seen, over the life of one logical client."""

    __slots__ = ("seqs",)

    def __init__(self) -> None:
        self.seqs: dict[str, int] = {}

    def snapshot(self, topic: str, seq: int) -> None:
        """A snapshot sets the position, whatever it was (a reset stream may go lower)."""
        self.seqs[topic] = seq

    def event(self, topic: str, seq: int) -> Verdict:
        position = self.seqs.get(topic)
        if position is None:
            return Verdict.NO_SNAPSHOT
        if seq == position + 1:
            self.seqs[topic] = seq
            return Verdict.OK
        if seq > position + 1:
            # count it and move on, so one gap is reported once, not on every later event
            self.seqs[topic] = seq
            return Verdict.GAP
        return Verdict.DUPLICATE if seq == position else Verdict.BACKWARDS

    def since(self, topics: list[str]) -> dict[str, int]:
        """The ``since`` map for a resubscribe: topics that have a position."""
        return {topic: self.seqs[topic] for topic in topics if topic in self.seqs}
