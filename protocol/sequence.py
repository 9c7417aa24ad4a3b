"""The delivery guarantee (PROTOCOL.md section 4) as one pure rule.

For every subscribed topic a client's position moves only forward: an
``event`` must carry ``seq`` = position + 1, and a ``snapshot`` sets the
position to its own ``seq``. :func:`arrival` names what one event's ``seq``
is against the position held; what to do about it is the caller's (the
client SDK drops it and resubscribes, the load tools count it and move on).
"""

from __future__ import annotations

import enum

__all__ = ["Arrival", "arrival"]


class Arrival(enum.Enum):
    """What one event's ``seq`` is, set against the topic's position."""

    OK = "ok"  # position + 1: the next one
    NO_SNAPSHOT = "no_snapshot"  # the topic never had a starting point
    GAP = "gap"  # seq jumped past position + 1
    DUPLICATE = "duplicate"  # seq equal to the position
    BACKWARDS = "backwards"  # seq below the position

    @property
    def repeat(self) -> bool:
        """Already seen (a duplicate or a step backwards)."""
        return self is Arrival.DUPLICATE or self is Arrival.BACKWARDS


def arrival(position: int | None, seq: int) -> Arrival:
    """The event with ``seq`` arriving at a topic held at ``position`` (None:
    no snapshot yet)."""
    if position is None:
        return Arrival.NO_SNAPSHOT
    if seq == position + 1:
        return Arrival.OK
    if seq > position:
        return Arrival.GAP
    return Arrival.DUPLICATE if seq == position else Arrival.BACKWARDS
