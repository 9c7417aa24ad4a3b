"""One topic as the gateway sees it: position, snapshot, recent history.

Sans-I/O. Live envelopes are offered in arrival order; the topic answers
whether each one is the next event (and gives its frame, encoded once), a
duplicate to drop, or proof of a gap that must be repaired before anything
newer is forwarded. While a topic is not ``ready`` (snapshot not loaded yet)
or is repairing a gap, offered envelopes are held back in ``held``.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from itertools import islice

from scorecast.protocol.codec import encode, text_frame
from scorecast.protocol.envelope import Envelope
from scorecast.protocol.messages import NULL, Event, Snapshot

__all__ = ["Gap", "Topic"]


@dataclass(frozen=True, slots=True)
class Gap:
    """Events ``first``..``last`` (topic seqs) are missing."""

    first: int
    last: int


class Topic:
    __slots__ = (
        "_snapshot_frame",
        "backfilling",
        "generation",
        "held",
        "history",
        "holders",
        "lane",
        "load_failures",
        "name",
        "ready",
        "repairing",
        "seq",
        "state",
        "subscribers",
        "tick",
        "ts",
        "writers",
    )

    def __init__(self, name: str, history: int) -> None:
        self.name = name
        self.seq = 0
        self.ts: float | None = None
        self.state = NULL
        self.history: deque[tuple[int, bytes]] = deque(maxlen=history or None)
        # holders: every connection that holds the topic here. Those already
        # past their snapshot or replay receive live events, each either in
        # ``lane`` (session -> its direct writer: written the topic's frames of
        # a tick in one go, see Core.flush) or in ``subscribers`` (each frame
        # appended to what the session is owed), never both.
        self.holders: set = set()
        self.subscribers: set = set()
        self.lane: dict = {}
        self.tick: list[bytes] = []  # frames for the lane, this tick
        self.writers: list | None = None  # the lane's writers, as a list (None: stale)
        self.ready = False
        self.repairing = False
        self.held: list[Envelope] = []
        self._snapshot_frame: bytes | None = None
        # bumped when the topic's position is thrown away (a stream reset):
        # answers to reads asked for before are then ignored
        self.generation = 0
        self.load_failures = 0
        self.backfilling = False  # a JetStream read for replays is under way

    # --- position -----------------------------------------------------------

    def reset(self, latest: Envelope | None) -> None:
        """Take ``latest`` (the stream's newest message, or None) as the snapshot."""
        self.history.clear()
        self._snapshot_frame = None
        if latest is None:
            self.seq, self.ts, self.state = 0, None, NULL
        else:
            self.seq, self.ts, self.state = latest.seq, latest.ts, latest.state
        self.ready = True
        self.repairing = False

    def offer(self, envelope: Envelope) -> bytes | Gap | None:
        """The event frame to forward, a Gap to repair first, or None (drop/held)."""
        if not self.ready or self.repairing:
            self.held.append(envelope)
            return None
        if envelope.seq <= self.seq:
            return None
        if envelope.seq > self.seq + 1:
            self.repairing = True
            self.held.append(envelope)
            return Gap(self.seq + 1, envelope.seq - 1)
        return self._advance(envelope)

    def known(self, envelope: Envelope) -> bool:
        """Is ``envelope`` (at or below our position) one we already have?
        False means the stream went backwards: it was reset."""
        if envelope.seq == self.seq and envelope.ts == self.ts:
            return True
        for seq, frame in reversed(self.history):
            if seq == envelope.seq:
                return frame == self.event_frame(envelope)
            if seq < envelope.seq:
                break
        return False

    def event_frame(self, envelope: Envelope) -> bytes:
        event = Event(
            topic=self.name,
            seq=envelope.seq,
            ts=envelope.ts,
            kind=envelope.kind,
            data=envelope.data,
        )
        return text_frame(encode(event))

    def _advance(self, envelope: Envelope) -> bytes:
        frame = self.event_frame(envelope)
        self.seq, self.ts, self.state = envelope.seq, envelope.ts, envelope.state
        self._snapshot_frame = None
        self.history.append((envelope.seq, frame))
        return frame

    def release(self, repaired: list[Envelope]) -> tuple[list[bytes], Gap | None]:
        """Apply envelopes fetched to fill a gap, then the held ones, in order.

        Returns the frames to forward and a gap that is still open (the
        caller then resets from the newest envelope and sends a snapshot).
        """
        self.repairing = False
        pending = sorted(repaired + self.held, key=lambda env: env.seq)
        self.held = []
        frames: list[bytes] = []
        for index, envelope in enumerate(pending):
            if envelope.seq <= self.seq:
                continue
            if envelope.seq > self.seq + 1:
                self.held = pending[index:]
                self.repairing = True  # newer ones wait behind this gap's repair
                return frames, Gap(self.seq + 1, envelope.seq - 1)
            frames.append(self._advance(envelope))
        return frames, None

    def fill(self, gap: Gap, found: list[Envelope]) -> tuple[list[bytes], Gap | None, bool]:
        """Close ``gap`` with ``found`` (read from JetStream).

        Returns the frames to forward, a further gap if any, and whether the
        gap was filled. When the stream no longer has the missing events, jump
        to the newest envelope known and forward its snapshot instead, so
        subscribers never see a silent gap."""
        stored = {envelope.seq for envelope in found}
        if all(seq in stored for seq in range(gap.first, gap.last + 1)):
            return *self.release(found), True
        newest = max(self.held + found, key=lambda envelope: envelope.seq)
        self.held = []
        self.reset(newest)
        return [self.snapshot_frame()], None, False

    def extend_back(self, stored: dict[int, bytes]) -> None:
        """Older event frames (read from JetStream, by seq) extend the history
        back, as far as they run on without a hole and it has room."""
        history = self.history
        room = None if history.maxlen is None else history.maxlen - len(history)
        seq = history[0][0] - 1 if history else self.seq
        older: list[tuple[int, bytes]] = []
        while seq in stored and (room is None or len(older) < room):
            older.append((seq, stored[seq]))
            seq -= 1
        history.extendleft(older)  # newest first: each goes left of the one before

    def take_held(self) -> list[Envelope]:
        held, self.held = self.held, []
        return held

    # --- what a new subscriber gets -----------------------------------------

    def snapshot_frame(self) -> bytes:
        """The current snapshot, encoded once per position and shared."""
        if self._snapshot_frame is None:
            self._snapshot_frame = text_frame(
                encode(Snapshot(topic=self.name, seq=self.seq, ts=self.ts, state=self.state))
            )
        return self._snapshot_frame

    def frames_since(self, position: int) -> list[bytes] | None:
        """Event frames after ``position`` from memory, or None if not all held."""
        if position == self.seq:
            return []
        if position > self.seq or not self.history:
            return None
        oldest = self.history[0][0]
        if position + 1 < oldest:
            return None
        skip = position + 1 - oldest
        return [frame for _, frame in islice(self.history, skip, None)]
