"""The sans-I/O core: topic ordering, hub bookkeeping, slow-client policy.
No event loop, no network."""

from __future__ import annotations

import orjson

from gateway.hub import Hub
from gateway.outbox import Outbox, SlowClientPolicy, Verdict
from gateway.topic import Gap, Topic
from protocol.envelope import decode_envelope, encode_envelope


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


def test_hub_reports_first_and_last_subscriber():
    hub = Hub(history=10)
    a, b = object(), object()
    _, first = hub.attach(a, "t")
    _, again = hub.attach(b, "t")
    assert first and not again
    assert not hub.detach(a, "t")
    assert not hub.detach(a, "t")  # not held: nothing happens
    assert hub.detach(b, "t")
    assert hub.topics == {} and hub.by_connection == {}


def test_hub_detach_all_returns_topics_nobody_holds():
    hub = Hub(history=10)
    a, b = object(), object()
    for name in ("x", "y"):
        hub.attach(a, name)
    hub.attach(b, "y")
    assert hub.detach_all(a) == ["x"]
    assert hub.topic_count(b) == 1 and list(hub.topics) == ["y"]


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
