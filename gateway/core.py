"""The delivery core of one gateway node: every decision of PROTOCOL.md
section 4, without I/O.

Sans-I/O: no asyncio, nats or websockets here. Inputs are method calls
(a subscribe, a live message, the answer to a load or a fetch, a tick of
the sweep) that carry ``now`` where time matters. Outputs are

- bytes for a connection, queued per connection and handed over in one
  ``conn.write()`` per connection per :meth:`Core.flush`, and closes
  (``conn.close(code, reason)``): the :class:`Connection` port;
- effect records in :attr:`Core.effects` for the runner
  (:mod:`gateway.node` on asyncio, the tests by hand): subscribe or
  unsubscribe a topic at the broker, load a topic's newest message, fetch a
  range of stored ones, retry one of those later.

The state of one (connection, topic) pair is one :class:`Phase`; the moves
between phases are the table :data:`TRANSITIONS`::

    subscribe --> LOADING --snapshot/replay--> LIVE <--drained-- CONFLATED
                     |  \\--defer--> CONFLATED         \\--slow--^
                     \\--backfill--> BACKFILLING --replay/snapshot/defer-->
    any phase --reset--> LOADING (a stream reset: a snapshot replaces all)

Memory held for one connection (the bound asked by issue 12): live events
stop at ``soft_limit`` unsent bytes (the connection conflates, new events
are skipped, one snapshot per topic is owed); a replay (from memory or from
JetStream) or a snapshot is queued only while what the connection is owed
stays within ``soft_limit`` (an empty connection always gets one), else the
pair waits CONFLATED and gets the topic's shared snapshot once drained; past
``hard_limit`` unsent bytes, or conflating longer than ``grace``, the
connection is closed 4008. So one connection makes the node hold at most
about ``hard_limit`` + one tick of live frames + one record per held topic
(``max_topics_per_connection`` of them), plus the kernel's send buffer.
Snapshot frames are shared by every connection. A JetStream backfill
extends its topic's history back (as far as ``history`` allows), so those
who come next replay from memory; beyond that it is shared per topic, at
most :data:`BACKFILL_CACHE_ENTRIES` topics and
:data:`BACKFILL_CACHE_BYTES` bytes in all, and forgotten after
:data:`BACKFILL_REUSE` seconds by the sweep; a replay whose estimated size
exceeds ``soft_limit`` is answered with a snapshot without reading
JetStream at all.

A topic nobody holds any more lingers ``linger`` seconds (at most
:data:`LINGER_LIMIT` topics, the oldest dropped first): still subscribed at
the broker, its position and history kept current, so the clients of a
network blip or a drained neighbour that come back with ``since`` are
answered from memory, not from JetStream. The sweep then drops it.
"""

from __future__ import annotations

import enum
import logging
from collections import deque
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass
from itertools import repeat
from operator import call
from typing import Any, Protocol

from scorecast.gateway.hub import Hub
from scorecast.gateway.outbox import Outbox, SlowClientPolicy, Verdict
from scorecast.gateway.stats import Stats
from scorecast.gateway.topic import Gap, Topic
from scorecast.protocol.codec import encode, error_payload, text_frame
from scorecast.protocol.envelope import Envelope, InvalidEnvelope, decode_envelope
from scorecast.protocol.errors import ClientError, CloseCode, Forbidden, TooManyTopics
from scorecast.protocol.messages import Subscribe, Subscribed, Unsubscribe, Unsubscribed

__all__ = [
    "TRANSITIONS",
    "BrokerSubscribe",
    "BrokerUnsubscribe",
    "Connection",
    "Core",
    "Fetch",
    "Load",
    "Phase",
    "Retry",
]

log = logging.getLogger("scorecast.core")

BACKFILL_REUSE = 5.0  # seconds a JetStream read serves later recoveries of its topic
BACKFILL_CACHE_ENTRIES = 256  # topics whose backfill is kept at once
BACKFILL_CACHE_BYTES = 32 * 1024 * 1024  # encoded frames kept for backfills, in all
LINGER_LIMIT = 10_000  # unheld topics kept at once
RETRY_DELAY = 0.5  # seconds before a failed first load is tried again
ESTIMATED_FRAME = 64  # bytes per event, when no event of the topic is in memory
DIRECT_LIMIT = 64 * 1024  # a topic's frames of one tick larger than this go the careful way

Writer = Callable[[bytes], object]


class Connection(Protocol):
    """What the core needs from a client connection (WebSocket, SSE, a test)."""

    closed: bool

    def write(self, data: bytes) -> None: ...

    def unsent(self) -> int: ...

    def close(self, code: int, reason: str) -> None: ...


# --- effects: what the runner does for the core ---------------------------------


@dataclass(frozen=True, slots=True)
class BrokerSubscribe:
    topic: str


@dataclass(frozen=True, slots=True)
class BrokerUnsubscribe:
    topic: str


@dataclass(frozen=True, slots=True)
class Load:
    """Read the topic's newest stored message; answer with :meth:`Core.loaded`.

    ``purpose`` is ``load`` (first holder here: subscribe live first, then
    read), ``resync`` (after a reconnect) or ``reset`` (the stream was reset)."""

    topic: Topic
    generation: int
    purpose: str


@dataclass(frozen=True, slots=True)
class Fetch:
    """Read stored messages ``first..last`` (None: to the end); answer with
    :meth:`Core.fetched`. ``purpose`` is ``repair`` (a gap) or ``backfill``."""

    topic: Topic
    generation: int
    first: int
    last: int | None
    purpose: str


@dataclass(frozen=True, slots=True)
class Retry:
    """Run ``effect`` again after ``delay`` seconds."""

    delay: float
    effect: Any


# --- the state of one (connection, topic) pair -----------------------------------


class Phase(enum.Enum):
    LOADING = "loading"  # the topic's snapshot is not loaded here yet
    BACKFILLING = "backfilling"  # waiting for a JetStream read to replay from
    LIVE = "live"  # gets every event; its position is the topic's
    CONFLATED = "conflated"  # events skipped; the snapshot is owed when drained


LOADING, BACKFILLING, LIVE, CONFLATED = Phase

TRANSITIONS: dict[tuple[Phase, str], Phase] = {
    (LOADING, "snapshot"): LIVE,
    (LOADING, "replay"): LIVE,
    (LOADING, "backfill"): BACKFILLING,
    (LOADING, "defer"): CONFLATED,
    (BACKFILLING, "replay"): LIVE,
    (BACKFILLING, "snapshot"): LIVE,
    (BACKFILLING, "defer"): CONFLATED,
    (LIVE, "slow"): CONFLATED,
    (CONFLATED, "drained"): LIVE,
    (LOADING, "reset"): LOADING,
    (BACKFILLING, "reset"): LOADING,
    (LIVE, "reset"): LOADING,
    (CONFLATED, "reset"): LOADING,
}


class Pair:
    """One topic held by one connection."""

    __slots__ = ("phase", "position", "since")

    def __init__(self, since: int | None) -> None:
        self.phase = LOADING
        self.since = since  # asked for by the client (None: a snapshot)
        self.position = -1  # what the client has, while CONFLATED (-1: nothing valid)


class Session:
    """One connection as the core sees it: its pairs and what it is owed.

    ``direct`` is where the connection lets whole frames go straight (its
    transport's write) while it is not under pressure, None otherwise;
    ``lane`` says the session is in the lanes of its LIVE topics (see
    :meth:`Core.flush`)."""

    __slots__ = ("conn", "direct", "frames", "lane", "outbox", "pairs", "slow_since")

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        # share the connection's outbox when it has one: what it flushes on
        # close() is then exactly what the core queued
        outbox = getattr(conn, "outbox", None)
        self.outbox = outbox if isinstance(outbox, Outbox) else Outbox()
        self.frames = self.outbox.frames
        self.pairs: dict[str, Pair] = {}
        self.slow_since: float | None = None
        self.direct: Writer | None = None
        self.lane = False

    def owed(self) -> int:
        unsent: int = self.conn.unsent()
        return unsent + sum(map(len, self.frames))


class Core:
    """Topics, connections and the pairs between them, for one node."""

    def __init__(
        self,
        *,
        history: int = 256,
        soft_limit: int = 256 * 1024,
        hard_limit: int = 4 * 1024 * 1024,
        grace: float = 30.0,
        max_topics_per_connection: int | None = 500,
        linger: float = 0.0,
        stats: Stats | None = None,
    ) -> None:
        self.hub = Hub(history)
        self.stats = stats or Stats()
        self.policy = SlowClientPolicy(soft_limit, hard_limit, grace)
        self.max_topics = max_topics_per_connection
        self.linger = linger
        self.lingering: dict[str, float] = {}  # unheld topic -> dropped at; oldest first
        self.sessions: dict[Hashable, Session] = {}
        self.effects: list[Any] = []
        self.dirty: list[Session] = []
        # topics with frames for their lanes this tick; sessions that may join
        # lanes at the end of the next flush; sessions that came under pressure
        self.ticked: list[Topic] = []
        # (dicts as ordered sets: a gone connection leaves them in O(1), which
        # matters when a mass disconnect takes thousands in one tick)
        self.promote: dict[Session, None] = {}
        self.pressed: dict[Session, None] = {}
        self.direct_limit = DIRECT_LIMIT
        self.slow: set[Session] = set()
        # topic name -> (the Topic, its generation, expires at, bytes, frames by seq)
        self.backfills: dict[str, tuple[Topic, int, float, int, dict[int, bytes]]] = {}
        self.backfill_bytes = 0
        self.stream_resets = 0
        self.topic_resets = 0
        self.backfills_failed = 0
        self.replays_refused = 0

    # --- connections ------------------------------------------------------------

    def connect(self, conn: Any) -> Session:
        session = self.sessions.get(conn)
        if session is None:
            session = self.sessions[conn] = Session(conn)
        return session

    def disconnect(self, conn: Any, now: float) -> None:
        session = self.sessions.pop(conn, None)
        if session is not None:
            self.slow.discard(session)
            session.frames.clear()
            session.direct = None
        if session is not None:
            for name in session.pairs:
                topic = self.hub.topic(name)
                if topic is not None:
                    _not_live(session, topic)
            session.lane = False
            # nothing keeps a gone connection alive until the next flush
            self.pressed.pop(session, None)
            self.promote.pop(session, None)
        for name in self.hub.detach_all(conn):
            self._unheld(name, now)

    def direct(self, conn: Any, writer: Writer) -> None:
        """``conn`` takes whole frames through ``writer`` from now on, without
        being asked how much it holds, until it calls :meth:`indirect`: its
        transport pauses (past its high-water mark, which must not exceed
        ``soft_limit``), it closes or it is lost. It joins the lanes of its
        topics at the end of the next flush."""
        session = self.sessions.get(conn)
        if session is not None:
            session.direct = writer
            self.promote[session] = None

    def indirect(self, conn: Any) -> None:
        """``conn`` is under pressure, closing or gone: its frames go through
        ``conn.write`` again, and the policy is asked after each write. Safe
        to call from inside a writer (a transport's ``pause_writing``)."""
        session = self.sessions.get(conn)
        if session is None or session.direct is None:
            return
        session.direct = None
        if session.lane:
            self._leave(session)
        self.pressed[session] = None

    def pending(self) -> bool:
        """Is there anything for :meth:`flush` to do?"""
        return bool(self.dirty or self.ticked or self.promote)

    def send(self, conn: Any, frame: bytes) -> None:
        session = self.sessions.get(conn)
        if session is None:
            conn.write(frame)  # not (or no longer) known: nothing to queue behind
            return
        self._push(session, frame)

    def send_error(self, conn: Any, error: ClientError) -> None:
        self.stats.errors_sent += 1
        self.send(conn, text_frame(error_payload(error)))

    def close(self, conn: Any, code: int, reason: str, *, flush: bool = True) -> None:
        """Close ``conn``; what it is owed goes first unless ``flush`` is False
        (a slow consumer: its backlog is dropped and the close goes first)."""
        session = self.sessions.get(conn)
        if session is not None and not flush:
            if session.lane:
                self._leave(session)
            session.frames.clear()
        conn.close(code, reason)

    # --- requests -----------------------------------------------------------------

    def subscribe(self, conn: Any, request: Subscribe, now: float) -> None:
        """Answer ``subscribed``, then a snapshot or a replay per topic.

        Topics the grant does not allow each get a ``forbidden`` error; a
        request over the per-connection limit is refused whole."""
        session = self.connect(conn)
        grant = getattr(conn, "grant", None)
        allowed = [n for n in request.topics if grant is None or grant.allows(n)]
        new = sum(1 for name in allowed if name not in session.pairs)
        if self.max_topics is not None and len(session.pairs) + new > self.max_topics:
            raise TooManyTopics(f"at most {self.max_topics} topics per connection", request.id)
        for name in request.topics:
            if name not in allowed:
                self.send_error(conn, Forbidden(f"not allowed: {name}", request.id))
        if not allowed:
            return
        self._push(session, text_frame(encode(Subscribed(id=request.id, topics=allowed))))
        since = request.since or {}
        for name in allowed:
            topic, created = self.hub.attach(conn, name)
            self.lingering.pop(name, None)
            _not_live(session, topic)  # subscribing again restarts the topic
            pair = session.pairs[name] = Pair(since.get(name))
            if created:
                self._load(topic)
            elif topic.ready:
                self._start(session, topic, pair, now)

    def unsubscribe(self, conn: Any, request: Unsubscribe, now: float) -> None:
        self._drop(conn, request.topics, now)
        self.send(conn, text_frame(encode(Unsubscribed(id=request.id, topics=request.topics))))

    def regrant(self, conn: Any, request_id: int | None, now: float) -> list[str]:
        """The connection's grant changed (a refreshed token): every held topic
        it no longer allows is unsubscribed, each with a ``forbidden`` error."""
        session = self.sessions.get(conn)
        grant = getattr(conn, "grant", None)
        if session is None or grant is None:
            return []
        revoked = [name for name in session.pairs if not grant.allows(name)]
        for name in revoked:
            self.send_error(conn, Forbidden(f"no longer allowed: {name}", request_id))
        self._drop(conn, revoked, now)
        return revoked

    def _drop(self, conn: Any, names: list[str], now: float) -> None:
        session = self.sessions.get(conn)
        if session is not None and session.lane:
            self._leave(session)  # what this tick owes it goes out first
        for name in names:
            if session is not None and session.pairs.pop(name, None) is not None:
                topic = self.hub.topic(name)
                if topic is not None:
                    _not_live(session, topic)
            if self.hub.detach(conn, name):
                self._unheld(name, now)

    def _unheld(self, name: str, now: float) -> None:
        """Nobody here holds ``name`` any more: it lingers, or goes now."""
        if self.linger <= 0:
            self._remove(name)
            return
        self.lingering[name] = now + self.linger
        while len(self.lingering) > LINGER_LIMIT:
            self._remove(next(iter(self.lingering)))  # the oldest

    def _remove(self, name: str) -> None:
        self.lingering.pop(name, None)
        self.hub.remove(name)
        self.effects.append(BrokerUnsubscribe(name))
        self._forget_backfill(name)

    # --- the pair's moves ---------------------------------------------------------

    def _move(self, session: Session, topic: Topic, pair: Pair, how: str) -> None:
        phase = TRANSITIONS[pair.phase, how]  # a KeyError here is a bug in the core
        pair.phase = phase
        if phase is LIVE:
            if session.lane:  # lanes are joined at the end of a flush only
                self._leave(session)
            topic.subscribers.add(session)
        else:
            _not_live(session, topic)

    def _fits(self, session: Session, size: int) -> bool:
        """May ``size`` more bytes be queued for this connection now?"""
        owed = session.owed()
        return owed == 0 or owed + size <= self.policy.soft_limit

    def _start(self, session: Session, topic: Topic, pair: Pair, now: float) -> None:
        """First delivery of a ready topic: a replay after ``since`` when one
        is possible and fits the connection's bound, else a snapshot."""
        since = pair.since
        if since is not None and since < topic.seq:
            if (topic.seq - since) * _frame_estimate(topic) > self.policy.soft_limit:
                self.replays_refused += 1  # too big to replay: do not even read it
            else:
                frames = topic.frames_since(since)
                if frames is not None:
                    if self._fits(session, sum(map(len, frames))):
                        self.stats.recoveries_memory += 1
                        for frame in frames:
                            self._push(session, frame)
                        self._move(session, topic, pair, "replay")
                        return
                    self.replays_refused += 1
                else:
                    self._move(session, topic, pair, "backfill")
                    self._backfill(topic, now, session)
                    return
        elif since is not None and since == topic.seq:
            self.stats.recoveries_memory += 1  # nothing missed: nothing to replay
            self._move(session, topic, pair, "replay")
            return
        self._snapshot(session, topic, pair, "snapshot", now)

    def _snapshot(self, session: Session, topic: Topic, pair: Pair, how: str, now: float) -> None:
        frame = topic.snapshot_frame()
        if self._fits(session, len(frame)):
            self._push(session, frame)
            self._move(session, topic, pair, how)
        else:  # owed too much already: the snapshot waits until it drained
            pair.position = -1
            self._move(session, topic, pair, "defer")
            self._mark_slow(session, now)

    def _mark_slow(self, session: Session, now: float) -> None:
        if session.lane:
            self._leave(session)
        if session.slow_since is None:
            session.slow_since = now
            self.stats.slow_clients += 1
        self.slow.add(session)

    # --- writing ------------------------------------------------------------------

    def _push(self, session: Session, frame: bytes) -> None:
        if session.lane:
            self._leave(session)
        frames = session.frames
        frames.append(frame)
        if len(frames) == 1:
            self.dirty.append(session)

    def _fan_out(self, topic: Topic, frame: bytes) -> None:
        """One encoded frame for every LIVE pair: kept once for the topic's
        lane (written at the flush), appended for the others (the hot path)."""
        lane = topic.lane
        if lane:
            tick = topic.tick
            if not tick:
                self.ticked.append(topic)
            tick.append(frame)
        dirty = self.dirty
        subscribers = topic.subscribers
        for session in subscribers:
            frames = session.frames
            frames.append(frame)
            if len(frames) == 1:
                dirty.append(session)
        self.stats.fanouts += 1
        self.stats.deliveries += len(lane) + len(subscribers)

    # --- lanes: the connections that take frames straight ------------------------

    def _leave(self, session: Session) -> None:
        """Take ``session`` out of its lanes; what their ticks hold so far is
        queued for it, in order, before anything that comes next."""
        session.lane = False
        frames = session.frames
        empty = not frames
        topics = self.hub.topics
        for name, pair in session.pairs.items():
            if pair.phase is LIVE:
                topic = topics[name]
                if topic.lane.pop(session, None) is not None:
                    topic.writers = None
                    frames.extend(topic.tick)
                topic.subscribers.add(session)
        if empty and frames:
            self.dirty.append(session)

    def _join(self, session: Session) -> None:
        """Put ``session`` in the lanes of its LIVE topics, if it may be there:
        it takes frames straight, owes nothing, is not slow, is still here.
        Only at the end of a flush, when every tick is empty."""
        writer = session.direct
        if (
            session.lane
            or writer is None
            or session.slow_since is not None
            or session.frames
            or self.sessions.get(session.conn) is not session
        ):
            return
        session.lane = True
        topics = self.hub.topics
        for name, pair in session.pairs.items():
            if pair.phase is LIVE:
                topic = topics[name]
                topic.subscribers.discard(session)
                topic.lane[session] = writer
                topic.writers = None

    def flush(self, now: float) -> None:
        """Everything owed goes out: one write per connection that is owed
        frames of its own (a reply, a snapshot, a replay; or any frame, when
        it is under pressure or has no direct writer), then per topic one
        write of that topic's frames of this tick to each connection in its
        lane, from C (``map`` over the writers). The slow-client policy is
        asked where a socket did not take it all: after each careful write,
        and for each connection whose transport paused meanwhile.

        The lane is the paced case: a connection that owes nothing else gets
        an event by one ``transport.write``, with nothing asked of Python per
        connection. Per topic the frames of one tick are still joined."""
        limit = self.direct_limit
        for topic in self.ticked:  # too big for one direct write: the careful way
            if topic.lane and sum(map(len, topic.tick)) > limit:
                for session in list(topic.lane):
                    self._leave(session)
        dirty, self.dirty = self.dirty, []
        ticked, self.ticked = self.ticked, []
        # below both limits the policy has nothing to say: skip asking it
        quiet = min(self.policy.soft_limit, self.policy.hard_limit)
        written = writes = 0
        promote = self.promote
        for session in dirty:
            frames = session.frames  # Outbox.take(), inlined: the hot loop
            if not frames:
                continue
            data = frames[0] if len(frames) == 1 else b"".join(frames)
            frames.clear()
            conn = session.conn
            if conn.closed:
                continue
            conn.write(data)
            written += len(data)
            writes += 1
            if session.slow_since is not None or conn.unsent() > quiet:
                self._judge(session, now)
            if session.direct is not None:
                promote[session] = None
        for topic in ticked:
            tick = topic.tick
            if not tick:
                continue
            data = tick[0] if len(tick) == 1 else b"".join(tick)
            tick.clear()
            writers = topic.writers
            if writers is None:
                writers = topic.writers = list(topic.lane.values())
            if writers:
                _write_all(iter(writers), data)
                writes += len(writers)
                written += len(data) * len(writers)
        self.stats.writes += writes
        self.stats.bytes_out += written
        if self.pressed:
            pressed, self.pressed = self.pressed, {}
            for session in pressed:
                conn = session.conn
                if self.sessions.get(conn) is not session or conn.closed:
                    continue
                if session.slow_since is not None or conn.unsent() > quiet:
                    self._judge(session, now)
        if promote:
            self.promote = {}
            for session in promote:
                self._join(session)

    def _judge(self, session: Session, now: float) -> None:
        """The one place that decides about a slow connection."""
        conn = session.conn
        if conn.closed:
            self.slow.discard(session)
            return
        verdict = self.policy.judge(session, conn.unsent(), now)
        if verdict is Verdict.OK:
            return
        if verdict is Verdict.CONFLATE:
            if session.lane:
                self._leave(session)
            self.stats.slow_clients += 1
            self.slow.add(session)
            for name, pair in session.pairs.items():
                if pair.phase is LIVE:
                    topic = self.hub.topics[name]
                    pair.position = topic.seq
                    self._move(session, topic, pair, "slow")
        elif verdict is Verdict.RESUME:
            self.slow.discard(session)
            self._resume(session, now)
        else:
            self.slow.discard(session)
            self.stats.slow_closes += 1
            self.close(conn, CloseCode.SLOW_CONSUMER, "slow consumer", flush=False)

    def _resume(self, session: Session, now: float) -> None:
        """A conflating connection drained: each topic that moved on gets its
        newest snapshot (while they fit; the rest wait for the next drain)."""
        for name, pair in session.pairs.items():
            if pair.phase is not CONFLATED:
                continue
            topic = self.hub.topics[name]
            if pair.position == topic.seq:
                self._move(session, topic, pair, "drained")
                continue
            frame = topic.snapshot_frame()
            if not self._fits(session, len(frame)):
                self._mark_slow(session, now)  # still progressing: a new grace
                return
            self.stats.conflations += 1
            self._push(session, frame)
            self._move(session, topic, pair, "drained")

    def sweep(self, now: float) -> None:
        """Periodic: re-judge slow connections, drop topics done lingering,
        forget expired backfills."""
        for session in list(self.slow):
            self._judge(session, now)
        lingering = self.lingering
        while lingering:
            name, until = next(iter(lingering.items()))
            if until > now:
                break
            self._remove(name)
        for name, entry in list(self.backfills.items()):
            if entry[2] < now:
                self._forget_backfill(name)

    # --- topics ---------------------------------------------------------------------

    def _load(self, topic: Topic) -> None:
        self.effects.append(Load(topic, topic.generation, "load"))

    def _current(self, topic: Topic, generation: int) -> bool:
        return self.hub.topics.get(topic.name) is topic and topic.generation == generation

    def wanted(self, effect: Load | Fetch) -> bool:
        """Is the answer to ``effect`` still of use (the runner skips it if not)?"""
        return self._current(effect.topic, effect.generation)

    def loaded(self, effect: Load, latest: Envelope | BaseException | None, now: float) -> None:
        """The answer to a :class:`Load`: the newest stored envelope, None when
        the topic has none, or the exception the read raised."""
        topic = effect.topic
        if not self._current(topic, effect.generation):
            if effect.purpose == "load" and topic.name not in self.hub.topics:
                self.effects.append(BrokerUnsubscribe(topic.name))
            return
        if isinstance(latest, BaseException):
            if effect.purpose == "resync":
                log.warning("resync of %s failed: %r", topic.name, latest)
                return
            # one line per topic per outage, not one per retry
            level = logging.WARNING if topic.load_failures == 0 else logging.DEBUG
            log.log(level, "loading %s failed (%r); retrying", topic.name, latest)
            topic.load_failures += 1
            self.effects.append(Retry(RETRY_DELAY, effect))
            return
        topic.load_failures = 0
        if effect.purpose == "resync":
            if latest is None or latest.seq == topic.seq:
                return
            if latest.seq > topic.seq:
                self._offer(topic, latest, now)
                return
            self.topic_resets += 1  # behind our position: the stream was reset
            log.warning(
                "%s: the stream is at %s, behind %s: snapshot", topic.name, latest.seq, topic.seq
            )
            self._begin_reset(topic)
        self.stats.snapshots_loaded += 1
        held = topic.take_held()
        topic.reset(latest)
        self._release(topic, held, now)
        for conn in list(topic.holders):
            session = self.sessions.get(conn)
            pair = session.pairs.get(topic.name) if session else None
            if session is not None and pair is not None and pair.phase is LOADING:
                self._start(session, topic, pair, now)

    def message(self, name: str, body: bytes, now: float = 0.0) -> None:
        """A live message from the broker, in the subscription's order (what
        it decides does not depend on the time: the hot path reads no clock)."""
        self.stats.messages_in += 1
        topic = self.hub.topics.get(name)
        if topic is None:
            return
        try:
            envelope = decode_envelope(body)
        except InvalidEnvelope as exc:
            self.stats.invalid_envelopes += 1
            log.warning("dropped an invalid envelope on %s: %s", name, exc)
            return
        if envelope.topic != name:
            self.stats.invalid_envelopes += 1
            return
        if envelope.seq <= topic.seq and topic.ready and not topic.repairing:
            if not topic.known(envelope):  # not a duplicate: the stream went back
                self.topic_resets += 1
                log.warning(
                    "%s: seq %s arrived at position %s and is not a duplicate: the stream "
                    "was reset; re-syncing with a snapshot",
                    name,
                    envelope.seq,
                    topic.seq,
                )
                self._begin_reset(topic)
                self.effects.append(Load(topic, topic.generation, "reset"))
                topic.held.append(envelope)
            return
        self._offer(topic, envelope, now)

    def _offer(self, topic: Topic, envelope: Envelope, now: float) -> None:
        result = topic.offer(envelope)
        if result is None:
            return
        if isinstance(result, Gap):
            self.stats.gaps_detected += 1
            self._repair(topic, result)
        else:
            self._fan_out(topic, result)
            self.stats.observe_latency(envelope.ts)

    def _release(self, topic: Topic, repaired: list[Envelope], now: float) -> None:
        frames, gap = topic.release(repaired)
        for frame in frames:
            self._fan_out(topic, frame)
        if gap is not None:
            self._repair(topic, gap)

    def _repair(self, topic: Topic, gap: Gap) -> None:
        self.effects.append(Fetch(topic, topic.generation, gap.first, gap.last, "repair"))

    def fetched(self, effect: Fetch, found: list[Envelope] | BaseException, now: float) -> None:
        """The answer to a :class:`Fetch`: the envelopes read (maybe fewer than
        asked), or the exception the read raised."""
        topic = effect.topic
        if effect.purpose == "backfill":
            self._backfilled(effect, found, now)
            return
        if not self._current(topic, effect.generation):
            return
        if isinstance(found, BaseException):
            log.warning("gap repair of %s failed: %r", topic.name, found)
            found = []
        assert effect.last is not None  # a repair reads a bounded range: the gap
        frames, next_gap, filled = topic.fill(Gap(effect.first, effect.last), found)
        if filled:
            self.stats.gaps_repaired += 1
        else:
            self.stats.gaps_unrepaired += 1
        for frame in frames:
            self._fan_out(topic, frame)
        if next_gap is not None:
            self._repair(topic, next_gap)

    def resync(self, name: str | None = None) -> None:
        """After a broker reconnect or a dropped message: read each held
        topic's newest message (or one topic's) and catch up from it."""
        topics = [self.hub.topics.get(name)] if name is not None else list(self.hub.topics.values())
        for topic in topics:
            if topic is not None and topic.ready:
                self.effects.append(Load(topic, topic.generation, "resync"))

    def stream_reset(self) -> None:
        """The stream was recreated: every held topic is reloaded from the
        stream's newest valid message and every holder gets a snapshot that
        replaces its state."""
        self.stream_resets += 1
        log.warning(
            "the SCORES stream was reset: re-syncing %d topics with snapshots", len(self.hub.topics)
        )
        for name in list(self.backfills):
            self._forget_backfill(name)
        for topic in list(self.hub.topics.values()):
            self._begin_reset(topic)
            self.effects.append(Load(topic, topic.generation, "reset"))

    def _begin_reset(self, topic: Topic) -> None:
        """Forget the topic's position; every pair waits for the next load and
        then gets a snapshot, whatever ``since`` it asked for."""
        topic.generation += 1
        topic.ready = False
        topic.repairing = False
        topic.backfilling = False
        topic.held = []
        self._forget_backfill(topic.name)
        for conn in topic.holders:
            session = self.sessions.get(conn)
            pair = session.pairs.get(topic.name) if session else None
            if session is not None and pair is not None:
                pair.since = None
                self._move(session, topic, pair, "reset")

    # --- recovery from JetStream ----------------------------------------------------

    def _backfill(self, topic: Topic, now: float, session: Session) -> None:
        """Clients asked for events older than memory: one JetStream read per
        topic, shared by every client waiting for it, and reused for a few
        seconds by those who come next (a reconnect storm arrives over seconds;
        each of those is served alone, not by walking every holder)."""
        cached = self.backfills.get(topic.name)
        if cached is not None and cached[0] is topic and cached[1] == topic.generation:
            if cached[2] >= now:
                self._serve_backfill(topic, cached[4], now, [session])
                return
            self._forget_backfill(topic.name)
        if topic.backfilling:
            return
        topic.backfilling = True
        self.effects.append(Fetch(topic, topic.generation, 1, None, "backfill"))

    def _backfilled(self, effect: Fetch, found: list[Envelope] | BaseException, now: float) -> None:
        topic = effect.topic
        if not self._current(topic, effect.generation):
            return
        topic.backfilling = False
        if isinstance(found, BaseException):  # never cached, never a recovery
            self.backfills_failed += 1
            log.warning("backfill of %s failed (%r): snapshots instead", topic.name, found)
            stored: dict[int, bytes] = {}
        else:
            self.stats.recoveries_jetstream += 1
            stored = {envelope.seq: topic.event_frame(envelope) for envelope in found}
            topic.extend_back(stored)
            if stored and (not topic.history or min(stored) < topic.history[0][0]):
                self._remember_backfill(topic, stored, now)  # older than memory holds
        self._serve_backfill(topic, stored, now)

    def _remember_backfill(self, topic: Topic, stored: dict[int, bytes], now: float) -> None:
        size = sum(map(len, stored.values()))
        if size > BACKFILL_CACHE_BYTES:
            return
        self._forget_backfill(topic.name)
        while self.backfills and (
            len(self.backfills) >= BACKFILL_CACHE_ENTRIES
            or self.backfill_bytes + size > BACKFILL_CACHE_BYTES
        ):
            self._forget_backfill(next(iter(self.backfills)))  # the oldest
        self.backfills[topic.name] = (topic, topic.generation, now + BACKFILL_REUSE, size, stored)
        self.backfill_bytes += size

    def _forget_backfill(self, name: str) -> None:
        entry = self.backfills.pop(name, None)
        if entry is not None:
            self.backfill_bytes -= entry[3]

    def _serve_backfill(
        self,
        topic: Topic,
        stored: dict[int, bytes],
        now: float,
        sessions: list[Session] | None = None,
    ) -> None:
        """Replay to each waiting pair (of ``sessions``; None: of every holder)
        from memory and the stored events, or a snapshot where the two do not
        cover what it missed or it does not fit."""
        if sessions is None:
            found = (self.sessions.get(conn) for conn in list(topic.holders))
            sessions = [session for session in found if session is not None]
        recent = dict(topic.history)
        for session in sessions:
            pair = session.pairs.get(topic.name)
            if pair is None or pair.phase is not BACKFILLING or pair.since is None:
                continue
            wanted = range(pair.since + 1, topic.seq + 1)
            frames = [recent.get(seq) or stored.get(seq) for seq in wanted]
            present = [frame for frame in frames if frame is not None]
            if len(present) == len(frames) and self._fits(session, sum(map(len, present))):
                for frame in present:
                    self._push(session, frame)
                self._move(session, topic, pair, "replay")
            else:
                self._snapshot(session, topic, pair, "snapshot", now)

    # --- figures --------------------------------------------------------------------

    def figures(self) -> dict[str, int]:
        return {
            "subscriptions": sum(len(names) for names in self.hub.by_connection.values()),
            "topics": len(self.hub.topics),
            "topics_lingering": len(self.lingering),
            "slow_connections": len(self.slow),
            "stream_resets": self.stream_resets,
            "topic_resets": self.topic_resets,
            "backfills_failed": self.backfills_failed,
            "replays_refused": self.replays_refused,
            "backfill_cache_bytes": self.backfill_bytes,
        }


def _not_live(session: Session, topic: Topic) -> None:
    """``session`` gets no more live frames of ``topic`` (in a lane or not)."""
    topic.subscribers.discard(session)
    if topic.lane.pop(session, None) is not None:
        topic.writers = None


def _write_all(writers: Iterator[Writer], data: bytes) -> None:
    """``data`` to every writer, the loop in C. A transport that failed under
    us (reset by the peer in this very loop: uvloop then refuses writes
    until the loss is reported) is skipped; the others still get theirs."""
    while True:
        try:
            deque(map(call, writers, repeat(data)), maxlen=0)
            return
        except RuntimeError:
            log.debug("a write to a closed transport was skipped")


def _frame_estimate(topic: Topic) -> int:
    """Bytes of one event frame of ``topic``, from the newest one in memory."""
    return len(topic.history[-1][1]) if topic.history else ESTIMATED_FRAME
