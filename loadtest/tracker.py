"""Checks the delivery guarantee (PROTOCOL.md section 4) for one logical client.

Sans-I/O. Feed it every ``snapshot`` and ``event`` frame; it keeps each
topic's position across reconnects (which is what ``since`` is built from)
and names each event with :class:`scorecast.protocol.sequence.Arrival`, the
rule the client SDK enforces too: the next one, an event before any
snapshot, a gap, a duplicate, or a step backwards. The one sequence checker
of the load tools and the tests (``tests.support.check_sequence`` asserts
with it).
"""

from __future__ import annotations

from scorecast.protocol.sequence import Arrival, arrival

__all__ = ["Arrival", "Positions"]


class Positions:
    """Topic -> last seq seen, over the life of one logical client."""

    __slots__ = ("seqs",)

    def __init__(self) -> None:
        self.seqs: dict[str, int] = {}

    def snapshot(self, topic: str, seq: int) -> None:
        """A snapshot sets the position, whatever it was (a reset stream may go lower)."""
        self.seqs[topic] = seq

    def event(self, topic: str, seq: int) -> Arrival:
        """What this event is; the next one and a gap move the position to it
        (so one gap is reported once, not on every later event)."""
        verdict = arrival(self.seqs.get(topic), seq)
        if verdict is Arrival.OK or verdict is Arrival.GAP:
            self.seqs[topic] = seq
        return verdict

    def since(self, topics: list[str]) -> dict[str, int]:
        """The ``since`` map for a resubscribe: topics that have a position."""
        return {topic: self.seqs[topic] for topic in topics if topic in self.seqs}
