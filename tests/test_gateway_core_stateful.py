"""The delivery core driven through random interleavings, without an event
loop: subscribes, unsubscribes, resubscribes with and without ``since``,
live messages lost, duplicated and reordered, reads that fail or come back
partial, broker reconnects, stream resets, slow and fast readers.

Every frame a client reads is checked against PROTOCOL.md section 4 as it
is read (positions only move forward, an event is previous + 1 unless a
snapshot comes between, never a duplicate, never a silent gap: each event's
state must be the stream's); once the world is quiet every open client's
state (its snapshot with every merge patch applied) equals the stream's.
"""

from __future__ import annotations

import struct

import orjson
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from scorecast.gateway.broker_memory import MemoryBroker
from scorecast.gateway.core import (
    LIVE,
    BrokerSubscribe,
    BrokerUnsubscribe,
    Core,
    Fetch,
    Load,
    Retry,
)
from scorecast.protocol.merge_patch import apply_patch
from scorecast.protocol.messages import Subscribe, Unsubscribe

TOPICS = ("a", "b", "c")
CLIENTS = 3


def frames_in(buffer: bytearray, limit: int | None) -> list[dict]:
    """Take whole server frames off the front of ``buffer`` (at most about
    ``limit`` bytes, None: all), as the client would read them."""
    out: list[dict] = []
    taken = 0
    while buffer and (limit is None or taken < limit):
        size = buffer[1]
        head = 2
        if size == 126:
            (size,) = struct.unpack("!H", buffer[2:4])
            head = 4
        elif size == 127:
            (size,) = struct.unpack("!Q", buffer[2:10])
            head = 10
        out.append(orjson.loads(bytes(buffer[head : head + size])))
        del buffer[: head + size]
        taken += head + size
    return out


def epoch_of(message: dict, broker: MemoryBroker) -> int:
    """Which incarnation of the stream a frame comes from (the memory broker's
    clock tells: see MemoryBroker.publish). Position 0 is the same in all."""
    ts = message["ts"]
    return broker.epoch if ts is None else int(ts // 1_000_000)


HIGH_WATER = 300  # a direct wire "pauses" past this many unread bytes (soft limit: 600)


class Wire:
    """A client connection's socket: what was written and not yet read.

    A ``direct`` wire behaves like the gateway's WebSocket connection: it lets
    the core write to it straight (the core's lanes) until it holds more than
    HIGH_WATER unread bytes (a transport's pause_writing), and offers that
    again once read down to a quarter of it (resume_writing)."""

    def __init__(self, core: Core | None = None) -> None:
        self.buffer = bytearray()
        self.closed = False
        self.code: int | None = None
        self.core = core
        self.paused = False

    def write(self, data: bytes) -> None:
        assert not self.closed, "written after close"
        self.buffer += data
        if self.core is not None and not self.paused and len(self.buffer) > HIGH_WATER:
            self.paused = True
            self.core.indirect(self)

    def drained(self) -> None:
        drained = len(self.buffer) <= HIGH_WATER // 4
        if self.core is not None and self.paused and drained and not self.closed:
            self.paused = False
            self.core.direct(self, self.write)

    def unsent(self) -> int:
        return len(self.buffer)

    def close(self, code: int, reason: str) -> None:
        self.closed = True
        self.code = code
        if self.core is not None:
            self.core.indirect(self)


class View:
    """What one client knows: per topic its position and state."""

    def __init__(self, machine: CoreMachine) -> None:
        self.machine = machine
        machine.created += 1
        # every other connection takes frames straight while it keeps up
        self.wire = Wire(machine.core if machine.created % 2 else None)
        # request id -> its topics, its since, and the state it had at each since
        # (frames read before the reply may replace the log: a reset's snapshot)
        self.requests: dict[int, tuple[list[str], dict[str, int], dict[str, object]]] = {}
        self.next_id = 1
        self.positions: dict[str, int | None] = {}  # topics held (acknowledged)
        self.states: dict[str, object] = {}
        self.epochs: dict[str, int] = {}  # the stream epoch of what it holds
        self.logs: dict[str, dict[int, object]] = {}  # states it had, by seq
        self.leaving: set[str] = set()  # unsubscribed, not yet acknowledged
        self.disconnected = False

    def request(self, topics: list[str], since: dict[str, int]) -> Subscribe:
        request = Subscribe(id=self.next_id, topics=topics, since=since or None)
        had = {name: self.logs[name][seq] for name, seq in since.items()}
        self.requests[self.next_id] = (topics, since, had)
        self.next_id += 1
        return request

    def read(self, limit: int | None) -> None:
        for message in frames_in(self.wire.buffer, limit):
            self.check(message)
        self.wire.drained()

    def check(self, message: dict) -> None:
        kind = message["type"]
        broker = self.machine.broker
        if kind == "subscribed":
            topics, since, had = self.requests[message["id"]]
            assert message["topics"] == topics
            for name in topics:
                self.leaving.discard(name)
                if name in since:  # back at since, with the state it had there
                    self.positions[name] = since[name]
                    self.states[name] = had[name]
                    self.logs[name] = {since[name]: had[name]}
                else:
                    self.positions[name] = None
                    self.states.pop(name, None)
            return
        if kind == "unsubscribed":
            for name in message["topics"]:
                self.leaving.discard(name)
                self.positions.pop(name, None)
                self.states.pop(name, None)
            return
        assert kind in ("snapshot", "event"), message
        name = message["topic"]
        if name in self.leaving:
            return  # sent before our unsubscribe was read
        assert name in self.positions, f"a frame of a topic not held: {message}"
        position = self.positions[name]
        if kind == "snapshot":
            if position is not None and message["seq"] < position:
                # only a stream reset sends a client back (its since are honest)
                assert epoch_of(message, broker) != self.epochs.get(name), message
            self.positions[name] = message["seq"]
            self.states[name] = message["state"]
            self.epochs[name] = epoch_of(message, broker)
            self.logs[name] = {message["seq"]: message["state"]}
            return
        assert position is not None, f"an event before any snapshot: {message}"
        assert message["seq"] == position + 1, f"at {position}, got {message}"
        self.positions[name] = message["seq"]
        self.states[name] = apply_patch(self.states.get(name), message["data"])
        self.epochs[name] = epoch_of(message, broker)
        self.logs[name][message["seq"]] = self.states[name]


class CoreMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0
        self.broker = MemoryBroker(keep=12)
        # small limits, so that a few frames make a slow reader, a short replay
        # a backfill, and a long one a snapshot; a topic nobody holds lingers
        # for a tick or two
        self.core = Core(history=1, soft_limit=600, hard_limit=4000, grace=5.0, linger=1.0)
        self.created = 0
        self.resets = 0
        self.away: dict[int, View] = {}
        self.inflight: list[tuple[str, bytes]] = []  # live messages on their way
        self.pending: list[Load | Fetch] = []  # broker reads under way
        self.views = [View(self) for _ in range(CLIENTS)]
        for view in self.views:
            self.attach(view)

    def attach(self, view: View) -> None:
        """The connection opens: the core knows it, and a direct one offers its writer."""
        self.core.connect(view.wire)
        if view.wire.core is not None:
            self.core.direct(view.wire, view.wire.write)

    # --- plumbing -------------------------------------------------------------

    def run_effects(self) -> None:
        effects, self.core.effects = self.core.effects, []
        for effect in effects:
            if isinstance(effect, BrokerUnsubscribe):
                self.broker.subscriptions.discard(effect.topic)
            elif isinstance(effect, BrokerSubscribe):
                self.broker.subscriptions.add(effect.topic)
            elif isinstance(effect, Retry):
                self.pending.append(effect.effect)
            else:
                if isinstance(effect, Load) and effect.purpose == "load":
                    self.broker.subscriptions.add(effect.topic.name)
                self.pending.append(effect)

    def lost_connections(self) -> None:
        """A connection the core closed goes away (as the transport reports)."""
        for index, view in enumerate(self.views):
            if view.wire.closed and not view.disconnected:
                view.read(None)  # what was written before the close
                view.disconnected = True
                self.core.disconnect(view.wire, self.now)
                self.run_effects()
                self.views[index] = fresh = View(self)
                self.attach(fresh)

    def after(self) -> None:
        """What the runner does after each input: its effects, then the
        flush of the loop tick, then the connections that went away."""
        self.run_effects()
        self.core.flush(self.now)
        self.run_effects()
        self.lost_connections()

    # --- the world --------------------------------------------------------------

    @rule(topic=st.sampled_from(TOPICS), value=st.integers(0, 3))
    def publish(self, topic, value):
        field = f"f{value}"
        patch = {field: self.broker.heads.get(topic, 0) + 1} if value else {"f1": None}
        body = self.broker.publish(topic, patch, deliver=False)
        if topic in self.broker.subscriptions:
            self.inflight.append((topic, body))

    @rule(topic=st.sampled_from(TOPICS), count=st.integers(1, 6))
    def burst(self, topic, count):
        """Several events of one topic, arriving at once and in order."""
        for value in range(count):
            body = self.broker.publish(topic, {f"f{value % 3}": value}, deliver=False)
            if topic in self.broker.subscriptions:
                self.core.message(topic, body, self.now)
        self.after()

    @precondition(lambda self: self.inflight)
    @rule(data=st.data(), how=st.sampled_from(["next", "next", "next", "any", "twice", "lose"]))
    def deliver(self, data, how):
        index = 0 if how in ("next", "twice") else data.draw(st.integers(0, len(self.inflight) - 1))
        topic, body = self.inflight.pop(index)
        if how == "lose":
            self.lost = True
            return
        self.core.message(topic, body, self.now)
        if how == "twice":
            self.core.message(topic, body, self.now)
        self.after()

    @precondition(lambda self: self.pending)
    @rule(data=st.data(), outcome=st.sampled_from(["ok", "ok", "ok", "fail", "partial"]))
    def answer(self, data, outcome):
        effect = self.pending.pop(data.draw(st.integers(0, len(self.pending) - 1)))
        name = effect.topic.name
        if isinstance(effect, Load):
            result = TimeoutError("no answer") if outcome == "fail" else self.broker.newest(name)
            self.core.loaded(effect, result, self.now)
        else:
            found = self.broker.read(name, effect.first, effect.last)
            if outcome == "fail":
                result = TimeoutError("no answer")
            elif outcome == "partial":
                result = found[: len(found) // 2]
            else:
                result = found
            self.core.fetched(effect, result, self.now)
        self.after()

    @rule()
    def broker_reconnects(self):
        self.core.resync(None)
        self.after()

    @precondition(lambda self: self.resets < 2)
    @rule(unseen=st.integers(0, 8))
    def stream_reset(self, unseen):
        """The stream is recreated and ``unseen`` events are stored again
        before the gateway hears of it (their live copies lost)."""
        self.resets += 1
        self.inflight.clear()  # the old stream's messages are gone with it
        self.broker.reset()
        for topic in TOPICS:
            for value in range(unseen):
                self.broker.publish(topic, {"again": value}, deliver=False)
        self.core.stream_reset()
        self.after()

    # --- clients ------------------------------------------------------------------

    @rule(
        client=st.integers(0, CLIENTS - 1),
        topics=st.lists(st.sampled_from(TOPICS), min_size=1, max_size=3, unique=True),
        with_since=st.booleans(),
        back=st.integers(0, 6),
    )
    def subscribe(self, client, topics, with_since, back):
        view = self.views[client]
        view.read(None)  # a client acts on what it knows: read first
        since = {}
        if with_since:
            for name in topics:
                position = view.positions.get(name)
                if position is not None and view.epochs.get(name) == self.broker.epoch:
                    # resume from where it is, or from a state it had before
                    older = position - back
                    since[name] = older if older in view.logs.get(name, ()) else position
        self.core.subscribe(view.wire, view.request(topics, since), self.now)
        self.after()

    @rule(
        event=st.sampled_from(TOPICS),
        client=st.integers(0, CLIENTS - 1),
        topics=st.lists(st.sampled_from(TOPICS), min_size=1, max_size=3, unique=True),
        with_since=st.booleans(),
        unsubscribing=st.booleans(),
    )
    def request_in_the_same_tick(self, event, client, topics, with_since, unsubscribing):
        """A live event arrives and, before the flush, a client's request: what
        the lanes hold for this tick must reach it before the reply."""
        body = self.broker.publish(event, {"f0": self.broker.heads.get(event, 0)}, deliver=False)
        if event in self.broker.subscriptions:
            self.core.message(event, body, self.now)
        if unsubscribing:
            self.unsubscribe(client, topics[:2])
        else:
            self.subscribe(client, topics, with_since, 0)

    @rule(
        client=st.integers(0, CLIENTS - 1),
        topics=st.lists(st.sampled_from(TOPICS), min_size=1, max_size=2, unique=True),
    )
    def unsubscribe(self, client, topics):
        view = self.views[client]
        view.leaving.update(name for name in topics if name in view.positions)
        self.core.unsubscribe(view.wire, Unsubscribe(id=view.next_id, topics=topics), self.now)
        view.next_id += 1
        self.after()

    @rule(client=st.integers(0, CLIENTS - 1), missed=st.integers(0, 6))
    def leave(self, client, missed):
        """The client drops its connection (it comes back with ``since``);
        meanwhile its matches go on for ``missed`` events each."""
        old = self.views[client]
        old.read(None)
        self.core.disconnect(old.wire, self.now)
        old.disconnected = True
        self.run_effects()
        self.away[client] = old
        self.views[client] = View(self)
        self.attach(self.views[client])
        for topic in old.positions:
            self.burst(topic, missed)

    @precondition(lambda self: self.away)
    @rule(data=st.data())
    def come_back(self, data):
        client = data.draw(st.sampled_from(sorted(self.away)))
        old = self.away.pop(client)
        view = self.views[client]
        view.read(None)
        topics = [name for name in old.positions if name not in view.positions]
        if not topics:
            return
        since = {
            name: old.positions[name]
            for name in topics
            if old.positions[name] is not None and old.epochs.get(name) == self.broker.epoch
        }
        view.logs.update({name: old.logs[name] for name in since})
        view.epochs.update({name: old.epochs[name] for name in since})
        self.core.subscribe(view.wire, view.request(topics, since), self.now)
        self.after()

    @rule(client=st.integers(0, CLIENTS - 1), amount=st.sampled_from([None, 100, 400]))
    def read(self, client, amount):
        self.views[client].read(amount)

    @rule(dt=st.sampled_from([0.05, 0.5, 2.0]))
    def tick(self, dt):
        self.now += dt
        self.core.sweep(self.now)
        self.after()

    # --- what must hold after every step --------------------------------------------

    @invariant()
    def pairs_agree_with_topics(self):
        core = self.core
        for conn, session in core.sessions.items():
            assert set(session.pairs) == core.hub.by_connection.get(conn, set())
            for name, pair in session.pairs.items():
                topic = core.hub.topics[name]
                assert conn in topic.holders
                in_lane = session in topic.lane
                assert not (in_lane and session in topic.subscribers), name
                assert (in_lane or session in topic.subscribers) == (pair.phase is LIVE), (
                    name,
                    pair.phase,
                )
                if pair.phase is LIVE:
                    assert topic.ready
                    assert in_lane == session.lane, (name, session.lane)
            if session.lane:
                assert session.direct is not None and session.slow_since is None
        for name, topic in core.hub.topics.items():
            # held, or lingering (and then not past its time), never both
            assert bool(topic.holders) != (name in core.lingering), name
            assert name in self.broker.subscriptions, name
        assert all(until <= self.now + core.linger for until in core.lingering.values())
        assert set(core.lingering) <= set(core.hub.topics)

    def teardown(self):
        """Quiet the world: every live message delivered, every read answered,
        a reconnect's re-sync, every client reading; then each client holds
        the stream's state of each of its topics."""
        core = self.core
        core.resync(None)
        self.run_effects()
        for _ in range(200):
            while self.inflight:
                topic, body = self.inflight.pop(0)
                core.message(topic, body, self.now)
                self.after()
            while self.pending:
                effect = self.pending.pop(0)
                name = effect.topic.name
                if isinstance(effect, Load):
                    core.loaded(effect, self.broker.newest(name), self.now)
                else:
                    core.fetched(
                        effect, self.broker.read(name, effect.first, effect.last), self.now
                    )
                self.after()
            core.flush(self.now)
            self.after()
            for view in self.views:
                view.read(None)
            self.now += 0.05
            core.sweep(self.now)
            self.after()
            quiet = not (self.inflight or self.pending or core.pending() or core.slow)
            if quiet and not any(view.wire.buffer for view in self.views):
                break
        else:
            raise AssertionError("the core did not come to rest")
        for view in self.views:
            for name, position in view.positions.items():
                head = self.broker.newest(name)
                assert position == (head.seq if head else 0), (name, position, head)
                assert view.states.get(name) == self.broker.states.get(name), name


CoreMachine.TestCase.settings = settings(
    max_examples=500,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
TestCore = CoreMachine.TestCase
