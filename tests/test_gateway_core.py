"""The sans-I/O core: topic ordering, hub bookkeeping, slow-client policy.
No event loop, no network."""

from __future__ import annotations

import orjson

from scorecast.gateway.hub import Hub
from scorecast.gateway.outbox import Outbox, SlowClientPolicy, Verdict
from scorecast.gateway.topic import Gap, Topic
from scorecast.protocol.envelope import decode_envelope, encode_envelope


def env(seq: int, topic: str = "match.1", state: dict | None = None):
    state = state if state is not None else {"n": seq}
    return decode_envelope(encode_envelope(topic, seq, 1000.0 + seq, "tick", {"n": seq}, state))


def payload(frame: bytes) -> dict:
    return orjson.loads(frame[2:] if frame[1] < 126 else frame[4:])


def ready_topic(seq: int = 0, history: int = 10) -> Topic:
    topic = Topic("match.1", history)
    topic.reset(env(seq) if seq else None)
    return topic


def test_in_order_events_become_frames_encoded_once():
    topic = ready_topic(1)
    frame = topic.offer(env(2))
    assert payload(frame) == {
        "type": "event", "topic": "match.1", "seq": 2, "ts": 1002.0, "kind": "tick",
        "data": {"n": 2},
    }  # fmt: skip
    assert topic.seq == 2 and topic.history[-1] == (2, frame)


def test_duplicates_and_old_messages_are_dropped():
    topic = ready_topic(5)
    assert topic.offer(env(5)) is None
    assert topic.offer(env(3)) is None
    assert topic.seq == 5


def test_gap_holds_newer_messages_until_repaired():
    topic = ready_topic(1)
    assert topic.offer(env(4)) == Gap(2, 3)
    assert topic.repairing
    assert topic.offer(env(5)) is None  # held, not forwarded past the gap
    frames, gap = topic.release([env(2), env(3)])
    assert [payload(f)["seq"] for f in frames] == [2, 3, 4, 5] and gap is None
    assert not topic.repairing and topic.seq == 5


def test_release_reports_a_gap_still_open():
    topic = ready_topic(1)
    topic.offer(env(4))
    frames, gap = topic.release([env(2)])
    assert [payload(f)["seq"] for f in frames] == [2]
    assert gap == Gap(3, 3) and [e.seq for e in topic.held] == [4]


def test_a_gap_left_by_a_repair_holds_newer_messages_behind_it():
    topic = ready_topic(1)
    assert topic.offer(env(3)) == Gap(2, 2)
    assert topic.offer(env(5)) is None
    frames, gap = topic.release([env(2)])  # the repair: 2, 3, then 4 is missing
    assert [payload(f)["seq"] for f in frames] == [2, 3] and gap == Gap(4, 4)
    assert topic.repairing  # so the next one waits: no second repair of the same hole
    assert topic.offer(env(6)) is None and [e.seq for e in topic.held] == [5, 6]


def test_messages_before_the_snapshot_are_held_then_filtered():
    topic = Topic("match.1", 10)
    assert topic.offer(env(3)) is None and topic.offer(env(4)) is None
    held = topic.take_held()
    topic.reset(env(3))
    frames, gap = topic.release(held)
    assert [payload(f)["seq"] for f in frames] == [4] and gap is None


def test_snapshot_frame_is_cached_per_position():
    topic = ready_topic(0)
    empty = topic.snapshot_frame()
    assert payload(empty) == {
        "type": "snapshot", "topic": "match.1", "seq": 0, "ts": None, "state": None,
    }  # fmt: skip
    assert topic.snapshot_frame() is empty
    topic.offer(env(1, state={"score": "1-0"}))
    assert payload(topic.snapshot_frame())["state"] == {"score": "1-0"}


def test_frames_since_uses_bounded_history():
    topic = ready_topic(0, history=3)
    for seq in range(1, 6):
        topic.offer(env(seq))
    assert topic.frames_since(5) == []
    assert [payload(f)["seq"] for f in topic.frames_since(3)] == [4, 5]
    assert [payload(f)["seq"] for f in topic.frames_since(2)] == [3, 4, 5]
    assert topic.frames_since(1) is None  # older than memory
    assert topic.frames_since(9) is None  # ahead of the topic: a snapshot instead


def test_extend_back_prepends_older_frames_as_far_as_they_run_on():
    topic = ready_topic(0, history=5)
    for seq in (1, 2, 3, 4, 5, 6, 7):
        topic.offer(env(seq))
    topic.history.popleft()  # history now 4..7, room for one more
    stored = {seq: topic.event_frame(env(seq)) for seq in (1, 2, 3)}
    topic.extend_back(stored)
    assert [seq for seq, _ in topic.history] == [3, 4, 5, 6, 7]
    assert [payload(f)["seq"] for f in topic.frames_since(2)] == [3, 4, 5, 6, 7]
    empty = ready_topic(9, history=5)  # just loaded: a snapshot, no events yet
    empty.extend_back({seq: empty.event_frame(env(seq)) for seq in (1, 2, 6, 8, 9)})
    assert [seq for seq, _ in empty.history] == [8, 9]  # 7 is missing: stop there


def test_hub_reports_first_and_last_subscriber():
    hub = Hub(history=10)
    a, b = object(), object()
    _, first = hub.attach(a, "t")
    _, again = hub.attach(b, "t")
    assert first and not again
    assert not hub.detach(a, "t")
    assert not hub.detach(a, "t")  # not held: nothing happens
    assert hub.detach(b, "t")
    assert hub.by_connection == {} and not hub.topics["t"].holders  # kept until removed
    hub.remove("t")
    assert hub.topics == {}


def test_hub_detach_all_returns_topics_nobody_holds():
    hub = Hub(history=10)
    a, b = object(), object()
    for name in ("x", "y"):
        hub.attach(a, name)
    hub.attach(b, "y")
    assert hub.detach_all(a) == ["x"]
    assert hub.topic_count(b) == 1 and hub.topics["y"].holders == {b}


def test_outbox_joins_frames_into_one_write():
    outbox = Outbox()
    assert outbox.push(b"a") and not outbox.push(b"b")
    assert outbox.take() == b"ab" and outbox.take() == b""


def test_slow_client_policy():
    policy = SlowClientPolicy(soft_limit=100, hard_limit=1000, grace=5.0)
    outbox = Outbox()
    assert policy.judge(outbox, 50, now=0.0) is Verdict.OK
    assert policy.judge(outbox, 150, now=1.0) is Verdict.CONFLATE
    assert policy.judge(outbox, 150, now=2.0) is Verdict.OK
    assert policy.judge(outbox, 20, now=3.0) is Verdict.RESUME
    assert policy.judge(outbox, 150, now=4.0) is Verdict.CONFLATE
    assert policy.judge(outbox, 150, now=9.5) is Verdict.CLOSE
    assert policy.judge(Outbox(), 1001, now=0.0) is Verdict.CLOSE


# --- the delivery core (gateway.core): one (connection, topic) phase each ---------

from scorecast.gateway import core as core_module  # noqa: E402
from scorecast.gateway.auth import Grant  # noqa: E402
from scorecast.gateway.core import (  # noqa: E402
    BACKFILL_REUSE,
    BrokerUnsubscribe,
    Core,
    Fetch,
    Load,
    Phase,
)
from scorecast.gateway.stats import Stats  # noqa: E402
from scorecast.protocol.messages import Subscribe, Unsubscribe  # noqa: E402
from tests.test_gateway_core_stateful import Wire, frames_in  # noqa: E402


def loaded_core(seq: int = 0, history: int = 10, **limits) -> tuple[Core, Wire]:
    """A core holding ``match.1`` at ``seq`` for one connection, which read it all."""
    core = Core(history=history, stats=Stats(), **limits)
    holder = Wire()
    core.subscribe(holder, Subscribe(id=1, topics=["match.1"]), 0.0)
    (load,) = core.effects
    core.effects.clear()
    core.loaded(load, env(seq) if seq else None, 0.0)
    core.flush(0.0)
    frames_in(holder.buffer, None)
    return core, holder


def resumed_by_backfill(core: Core, since: int, now: float = 0.0) -> Wire:
    """A client resuming ``match.1`` after ``since``: the one JetStream read
    it causes is answered with seqs 1..20, and the core flushed."""
    client = Wire()
    core.subscribe(client, Subscribe(id=1, topics=["match.1"], since={"match.1": since}), now)
    (fetch,) = core.effects
    core.effects.clear()
    assert isinstance(fetch, Fetch) and fetch.purpose == "backfill"
    core.fetched(fetch, [env(seq) for seq in range(1, 21)], now)
    core.flush(now)
    return client


def test_a_failed_backfill_is_neither_cached_nor_a_recovery():
    core, _ = loaded_core(seq=20, history=4)
    first = Wire()
    core.subscribe(first, Subscribe(id=1, topics=["match.1"], since={"match.1": 3}), 0.0)
    (fetch,) = core.effects
    core.effects.clear()
    assert isinstance(fetch, Fetch) and fetch.purpose == "backfill"
    core.fetched(fetch, TimeoutError("JetStream timed out"), 0.1)
    core.flush(0.1)
    assert [m["type"] for m in frames_in(first.buffer, None)] == ["subscribed", "snapshot"]
    assert core.stats.recoveries_jetstream == 0 and core.backfills_failed == 1
    assert core.backfills == {}
    # the next client resuming is given a real read, not the failure
    second = Wire()
    core.subscribe(second, Subscribe(id=1, topics=["match.1"], since={"match.1": 5}), 0.2)
    (again,) = core.effects
    core.effects.clear()
    core.fetched(again, [env(seq) for seq in range(1, 21)], 0.3)
    core.flush(0.3)
    frames = frames_in(second.buffer, None)[1:]
    assert [(m["type"], m["seq"]) for m in frames] == [("event", s) for s in range(6, 21)]
    assert core.stats.recoveries_jetstream == 1 and "match.1" in core.backfills


def test_a_backfill_extends_the_history_so_the_next_replay_is_from_memory():
    core, _ = loaded_core(seq=20, history=30)
    first = resumed_by_backfill(core, 15)
    assert [m["seq"] for m in frames_in(first.buffer, None)[1:]] == list(range(16, 21))
    assert core.backfills == {}  # the history holds it all: nothing cached beside it
    later = Wire()  # long after any cache would have expired
    core.subscribe(later, Subscribe(id=1, topics=["match.1"], since={"match.1": 2}), 600.0)
    assert core.effects == []
    core.flush(600.0)
    assert [m["seq"] for m in frames_in(later.buffer, None)[1:]] == list(range(3, 21))
    assert core.stats.recoveries_jetstream == 1 and core.stats.recoveries_memory == 1


def test_a_topic_nobody_holds_lingers_subscribed_then_goes():
    core, holder = loaded_core(seq=3, linger=5.0)
    core.disconnect(holder, 1.0)
    assert core.effects == [] and core.figures()["topics_lingering"] == 1
    core.message("match.1", encode_envelope("match.1", 4, 4.0, "k", {"n": 4}, {"n": 4}), 2.0)
    back = Wire()  # a client of the blip, with since: served from memory
    core.subscribe(back, Subscribe(id=1, topics=["match.1"], since={"match.1": 3}), 3.0)
    assert core.effects == [] and core.lingering == {}
    core.flush(3.0)
    assert [(m["type"], m["seq"]) for m in frames_in(back.buffer, None)[1:]] == [("event", 4)]
    core.unsubscribe(back, Unsubscribe(id=2, topics=["match.1"]), 4.0)
    core.sweep(8.9)
    assert "match.1" in core.hub.topics and core.effects == []
    core.sweep(9.1)
    assert core.effects == [BrokerUnsubscribe("match.1")] and core.hub.topics == {}


def test_lingering_topics_are_bounded_the_oldest_go_first(monkeypatch):
    monkeypatch.setattr(core_module, "LINGER_LIMIT", 2)
    core = Core(linger=60.0, stats=Stats())
    for n in range(3):
        conn = Wire()
        core.subscribe(conn, Subscribe(id=1, topics=[f"match.{n}"]), 0.0)
        core.effects.clear()
        core.disconnect(conn, float(n))
    assert core.effects == [BrokerUnsubscribe("match.0")]
    assert list(core.lingering) == ["match.1", "match.2"]


def test_the_backfill_cache_expires_in_the_sweep():
    core, _ = loaded_core(seq=20, history=4)
    resumed_by_backfill(core, 3)
    assert core.backfill_bytes > 0
    core.sweep(BACKFILL_REUSE + 1)
    assert core.backfills == {} and core.backfill_bytes == 0


def test_deliveries_count_only_connections_that_got_the_event():
    core, _ = loaded_core(seq=1, soft_limit=300, hard_limit=10_000)
    slow = Wire()
    core.subscribe(slow, Subscribe(id=1, topics=["match.1"]), 0.0)
    core.flush(0.0)
    slow.buffer += b"x" * 400  # the socket stopped taking bytes
    core.send(slow, b"x")
    core.flush(0.0)
    assert core.sessions[slow].pairs["match.1"].phase is Phase.CONFLATED
    before = core.stats.deliveries
    core.message("match.1", encode_envelope("match.1", 2, 2.0, "k", {"n": 2}, {"n": 2}), 0.1)
    assert core.stats.deliveries - before == 1


def test_a_narrower_grant_unsubscribes_what_it_no_longer_allows():
    core = Core(stats=Stats())
    conn = Wire()
    conn.grant = Grant(exp=0, patterns=None)
    core.subscribe(conn, Subscribe(id=1, topics=["match.1", "match.2", "cup.1"]), 0.0)
    conn.grant = Grant(exp=0, patterns=("match.*",))
    assert core.regrant(conn, 7, 0.0) == ["cup.1"]
    core.flush(0.0)
    errors = [m for m in frames_in(conn.buffer, None) if m["type"] == "error"]
    assert [(e["code"], e["id"]) for e in errors] == [("forbidden", 7)]
    assert set(core.sessions[conn].pairs) == {"match.1", "match.2"}
    assert "cup.1" not in core.hub.topics


def test_a_stream_reset_gives_every_holder_a_snapshot():
    core, holder = loaded_core(seq=9)
    core.stream_reset()
    (load,) = core.effects
    core.effects.clear()
    assert isinstance(load, Load) and load.purpose == "reset"
    core.loaded(load, env(2, state={"fresh": True}), 0.0)
    core.flush(0.0)
    (snapshot,) = frames_in(holder.buffer, None)
    assert (snapshot["type"], snapshot["seq"], snapshot["state"]) == (
        "snapshot",
        2,
        {"fresh": True},
    )
    assert core.figures()["stream_resets"] == 1
    core.message("match.1", encode_envelope("match.1", 3, 3.0, "k", {"n": 3}, {"n": 3}), 0.0)
    core.flush(0.0)
    assert [m["seq"] for m in frames_in(holder.buffer, None)] == [3]


def test_a_live_seq_going_back_is_a_reset_not_a_duplicate():
    core, holder = loaded_core(seq=9)
    core.message("match.1", encode_envelope("match.1", 9, 1009.0, "tick", {"n": 9}, {"n": 9}), 0.0)
    assert core.effects == []  # the same message again: a duplicate, dropped
    core.message("match.1", encode_envelope("match.1", 1, 5000.0, "k", {"a": 1}, {"a": 1}), 0.0)
    (load,) = core.effects
    core.effects.clear()
    assert load.purpose == "reset" and core.figures()["topic_resets"] == 1
    core.loaded(
        load, decode_envelope(encode_envelope("match.1", 1, 5000.0, "k", {"a": 1}, {"a": 1})), 0.0
    )
    core.flush(0.0)
    assert [(m["type"], m["seq"], m["state"]) for m in frames_in(holder.buffer, None)] == [
        ("snapshot", 1, {"a": 1})
    ]


def test_replays_obey_the_connection_memory_bound():
    """One connection asking 50 topics with since 0: what it is owed stays
    near soft_limit; the rest are snapshots, later, as it reads."""
    soft = 16 * 1024
    core = Core(history=300, soft_limit=soft, hard_limit=1024 * 1024, stats=Stats())
    names = [f"match.{n}" for n in range(50)]
    warm = Wire()
    core.subscribe(warm, Subscribe(id=1, topics=names), 0.0)
    for load in core.effects:
        core.loaded(load, None, 0.0)
    core.effects.clear()
    for name in names:
        for seq in range(1, 201):
            body = encode_envelope(name, seq, float(seq), "k", {"n": seq}, {"n": seq})
            core.message(name, body, 0.0)
    core.flush(0.0)
    warm.buffer.clear()
    greedy = Wire()
    core.subscribe(greedy, Subscribe(id=2, topics=names, since=dict.fromkeys(names, 0)), 1.0)
    assert core.effects == []  # no JetStream read at all
    core.flush(1.0)
    assert len(greedy.buffer) <= soft + 1024
    positions: dict[str, int] = {}
    for now in range(2, 200):
        for message in frames_in(greedy.buffer, None):
            if message["type"] == "snapshot":
                positions[message["topic"]] = message["seq"]
            elif message["type"] == "event":
                assert message["seq"] == positions[message["topic"]] + 1
                positions[message["topic"]] = message["seq"]
        core.sweep(now * 0.05)
        core.flush(now * 0.05)
        assert len(greedy.buffer) <= soft + 1024
    assert positions == dict.fromkeys(names, 200)


def test_a_cached_backfill_serves_the_newcomer_without_walking_every_holder():
    core, _ = loaded_core(seq=20, history=4)
    first = resumed_by_backfill(core, 3)
    frames_in(first.buffer, None)
    served = []
    serve = core._serve_backfill
    core._serve_backfill = lambda *args: served.append(args[3]) or serve(*args)
    later = Wire()
    core.subscribe(later, Subscribe(id=1, topics=["match.1"], since={"match.1": 7}), 1.0)
    assert core.effects == []  # the cached read, no second one
    core.flush(1.0)
    frames = frames_in(later.buffer, None)[1:]
    assert [(m["type"], m["seq"]) for m in frames] == [("event", s) for s in range(8, 21)]
    assert served == [[core.sessions[later]]]
    assert first.buffer == bytearray()


def _direct(core: Core) -> Wire:
    wire = Wire(core)
    core.connect(wire)
    core.direct(wire, wire.write)
    return wire


def test_a_connection_that_keeps_up_takes_a_tick_in_one_direct_write():
    core, _ = loaded_core(seq=1, soft_limit=600, hard_limit=10_000)
    wire = _direct(core)
    core.subscribe(wire, Subscribe(id=1, topics=["match.1"]), 0.0)
    core.flush(0.0)  # subscribed + snapshot the careful way; then it joins the lane
    session = core.sessions[wire]
    assert session.lane and session in core.hub.topics["match.1"].lane
    frames_in(wire.buffer, None)
    writes = []
    core.hub.topics["match.1"].lane[session] = lambda data: writes.append(data) or wire.write(data)
    for seq in (2, 3):
        core.message("match.1", encode_envelope("match.1", seq, 2.0, "k", {"n": seq}, {}), 0.1)
    assert wire.buffer == bytearray()  # nothing before the flush
    core.flush(0.1)
    assert len(writes) == 1  # both frames in one write
    assert [m["seq"] for m in frames_in(wire.buffer, None)] == [2, 3]


def test_a_reply_in_the_same_tick_comes_after_what_the_lane_owed():
    core, _ = loaded_core(seq=1, soft_limit=600, hard_limit=10_000)
    wire = _direct(core)
    core.subscribe(wire, Subscribe(id=1, topics=["match.1"]), 0.0)
    core.flush(0.0)
    frames_in(wire.buffer, None)
    core.message("match.1", encode_envelope("match.1", 2, 2.0, "k", {"n": 2}, {}), 0.1)
    core.subscribe(wire, Subscribe(id=2, topics=["match.1"], since={"match.1": 2}), 0.1)
    assert not core.sessions[wire].lane
    core.flush(0.1)
    kinds = [(m["type"], m.get("seq")) for m in frames_in(wire.buffer, None)]
    assert kinds == [("event", 2), ("subscribed", None)]


def test_a_paused_connection_leaves_the_lane_and_is_judged():
    core, _ = loaded_core(seq=1, soft_limit=600, hard_limit=100_000)
    wire = _direct(core)
    core.subscribe(wire, Subscribe(id=1, topics=["match.1"]), 0.0)
    core.flush(0.0)
    frames_in(wire.buffer, None)
    big = {"pad": "x" * 400}
    for seq in (2, 3):
        core.message("match.1", encode_envelope("match.1", seq, 2.0, "k", big, {}), 0.1)
        core.flush(0.1)  # nobody reads: past 300 bytes the wire pauses
    session = core.sessions[wire]
    assert wire.paused and not session.lane and session.direct is None
    assert session.pairs["match.1"].phase is Phase.CONFLATED  # past the soft limit: judged
