"""What one connection is owed, and the one place that decides about slow clients.

Sans-I/O. The node appends encoded frames to an :class:`Outbox` as events
arrive and writes everything owed in one go per event-loop tick. After each
write and on a periodic sweep, :class:`SlowClientPolicy` looks at how many
bytes the socket has not taken yet:

- below ``soft_limit``: nothing to do;
- above ``soft_limit``: the connection is *conflating*: new events of its
  topics are skipped and the topic names remembered;
- drained again below ``soft_limit // 4`` while conflating: each skipped
  topic gets its newest ``snapshot``, and events flow again;
- above ``hard_limit``, or conflating for longer than ``grace`` seconds:
  closed with 4008 (slow consumer).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = ["Outbox", "SlowClientPolicy", "Verdict"]


class Outbox:
    """Frames owed to one connection since its last write."""

    __slots__ = ("frames", "slow_since")

    def __init__(self) -> None:
        self.frames: list[bytes] = []
        self.slow_since: float | None = None

    def push(self, frame: bytes) -> bool:
        """Queue ``frame``; True when the outbox was empty (schedule a write)."""
        self.frames.append(frame)
        return len(self.frames) == 1

    def take(self) -> bytes:
        """Everything owed, as one string; the list is emptied in place (the
        core holds the same list)."""
        frames = self.frames
        if not frames:
            return b""
        data = frames[0] if len(frames) == 1 else b"".join(frames)
        frames.clear()
        return data


class Verdict(enum.Enum):
    OK = "ok"
    CONFLATE = "conflate"
    RESUME = "resume"
    CLOSE = "close"


@dataclass(frozen=True, slots=True)
class SlowClientPolicy:
    soft_limit: int = 256 * 1024
    hard_limit: int = 4 * 1024 * 1024
    grace: float = 30.0

    def judge(self, outbox: Outbox, unsent: int, now: float) -> Verdict:
        """Decide from ``unsent`` bytes still in the socket's write buffer."""
        if unsent > self.hard_limit:
            return Verdict.CLOSE
        if outbox.slow_since is None:
            if unsent > self.soft_limit:
                outbox.slow_since = now
                return Verdict.CONFLATE
            return Verdict.OK
        if unsent <= self.soft_limit // 4:
            outbox.slow_since = None
            return Verdict.RESUME
        if now - outbox.slow_since > self.grace:
            return Verdict.CLOSE
        return Verdict.OK
