"""The client's sans-I/O state machine against recorded frame sequences."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from scorecast.client.state import (
    Authed,
    ClientState,
    GatewayError,
    ReconnectHint,
    Send,
    Update,
    Welcomed,
)

SEQUENCES = json.loads((Path(__file__).parent / "js" / "sequences.json").read_text())

WELCOME = {"type": "welcome", "protocol": 1, "session": "s1", "node": "n1", "heartbeat": 20}


def snapshot(topic, seq, state, ts=1.0):
    return {"type": "snapshot", "topic": topic, "seq": seq, "ts": ts, "state": state}


def event(topic, seq, data, kind="update", ts=2.0):
    return {"type": "event", "topic": topic, "seq": seq, "ts": ts, "kind": kind, "data": data}


def connected(*topics):
    """A state that connected, subscribed to ``topics`` and got the answer."""
    state = ClientState(topics)
    (frame,) = state.connection_made()
    state.receive(WELCOME)
    state.receive({"type": "subscribed", "id": frame.message["id"], "topics": list(topics)})
    return state


def gap(state, frame):
    """Receive a frame that breaks the sequence, then flush the queued
    resubscribe (as the I/O layer does a moment later)."""
    outputs = state.receive(frame)
    assert sends(outputs) == [], "a gap alone sends nothing: flush() does"
    return outputs + state.flush()


def sends(outputs):
    return [o.message for o in outputs if isinstance(o, Send)]


def updates(outputs):
    return [o for o in outputs if isinstance(o, Update)]


def test_first_connection_subscribes_without_since():
    state = ClientState(["match.1", "football.live"])
    (frame,) = state.connection_made()
    assert frame.message == {"type": "subscribe", "id": 1, "topics": ["match.1", "football.live"]}
    (welcomed,) = state.receive(WELCOME)
    assert welcomed == Welcomed("s1", "n1", 20.0, 1)
    assert state.heartbeat == 20.0


def test_snapshot_then_events_apply_merge_patches():
    state = connected("match.1")
    (first,) = state.receive(snapshot("match.1", 3, {"score": "0-0", "minute": 10}))
    assert first == Update(
        "match.1", 3, "snapshot", {"score": "0-0", "minute": 10}, None, 1.0, snapshot=True
    )
    (goal,) = state.receive(event("match.1", 4, {"score": "1-0"}, kind="goal"))
    assert (goal.seq, goal.kind, goal.state) == (4, "goal", {"score": "1-0", "minute": 10})
    assert goal.data == {"score": "1-0"} and not goal.snapshot
    (clock,) = state.receive(event("match.1", 5, {"minute": None, "period": "HT"}))
    assert clock.state == {"score": "1-0", "period": "HT"}  # null removes a member
    view = state.view("match.1")
    assert (view.seq, view.state, view.ts) == (5, clock.state, 2.0)


def test_empty_topic_snapshot_then_first_event():
    state = connected("match.9")
    (empty,) = state.receive(snapshot("match.9", 0, None, ts=None))
    assert (empty.seq, empty.state, empty.ts) == (0, None, None)
    (first,) = state.receive(event("match.9", 1, {"a": {"b": 1}}))
    assert first.state == {"a": {"b": 1}}


def test_gap_drops_the_event_and_resubscribes_since_the_position():
    state = connected("match.1")
    state.receive(snapshot("match.1", 1, {"score": "0-0"}))
    outputs = gap(state, event("match.1", 3, {"score": "2-0"}))
    assert updates(outputs) == []
    assert sends(outputs) == [
        {"type": "subscribe", "id": 2, "topics": ["match.1"], "since": {"match.1": 1}}
    ]
    assert state.counters.gaps == 1
    # frames of the old subscription still in flight are dropped
    assert state.receive(event("match.1", 4, {"score": "3-0"})) == []
    assert state.counters.dropped_in_flight == 1
    # after `subscribed`, the replay of 2.. applies in order
    assert state.receive({"type": "subscribed", "id": 2, "topics": ["match.1"]}) == []
    seqs = [
        u.seq
        for n, score in ((2, "1-0"), (3, "2-0"), (4, "3-0"))
        for u in updates(state.receive(event("match.1", n, {"score": score})))
    ]
    assert seqs == [2, 3, 4]
    assert state.view("match.1").state == {"score": "3-0"}


def test_gap_answered_by_a_snapshot():
    state = connected("match.1")
    state.receive(snapshot("match.1", 1, {"score": "0-0"}))
    (resubscribe,) = sends(gap(state, event("match.1", 5, {"score": "1-0"})))
    state.receive({"type": "subscribed", "id": resubscribe["id"], "topics": ["match.1"]})
    (update,) = state.receive(snapshot("match.1", 7, {"score": "2-1"}))
    assert update.snapshot and (update.seq, update.state) == (7, {"score": "2-1"})
    assert updates(state.receive(event("match.1", 8, {"score": "3-1"})))[0].seq == 8


def test_duplicate_is_dropped_and_resumed_from_the_position():
    state = connected("match.1")
    state.receive(snapshot("match.1", 1, {"n": 1}))
    state.receive(event("match.1", 2, {"n": 2}))
    outputs = gap(state, event("match.1", 2, {"n": 2}))
    assert updates(outputs) == []
    assert sends(outputs)[0]["since"] == {"match.1": 2}
    assert state.counters.duplicates == 1
    assert state.view("match.1").state == {"n": 2}


def test_step_backwards_resubscribes_and_a_lower_snapshot_resets():
    state = connected("match.1")
    state.receive(snapshot("match.1", 40, {"score": "3-3"}))
    (resubscribe,) = sends(gap(state, event("match.1", 1, {"score": "0-0"})))
    assert resubscribe["since"] == {"match.1": 40}
    state.receive({"type": "subscribed", "id": resubscribe["id"], "topics": ["match.1"]})
    # the stream was reset: `since` is ahead, the gateway sends a lower snapshot
    (reset,) = state.receive(snapshot("match.1", 2, {"score": "1-0"}))
    assert reset.snapshot and reset.seq == 2
    assert state.view("match.1").seq == 2
    assert updates(state.receive(event("match.1", 3, {"score": "2-0"})))[0].seq == 3


def test_lower_snapshot_without_anomaly_replaces_state():
    state = connected("match.1")
    state.receive(snapshot("match.1", 10, {"a": 1, "b": 2}))
    (update,) = state.receive(snapshot("match.1", 4, {"a": 9}))
    assert update.state == {"a": 9} and state.view("match.1").seq == 4


def test_same_snapshot_twice_is_not_an_update():
    state = connected("match.1")
    state.receive(snapshot("match.1", 3, {"a": 1}))
    assert state.receive(snapshot("match.1", 3, {"a": 1})) == []


def test_event_before_any_snapshot_asks_for_a_snapshot():
    state = connected("match.1")
    (resubscribe,) = sends(gap(state, event("match.1", 5, {"a": 1})))
    assert "since" not in resubscribe
    assert state.view("match.1").seq is None


def test_reconnect_resubscribes_with_since_per_topic():
    state = connected("match.1", "match.2", "football.live")
    state.receive(snapshot("match.1", 7, {"a": 1}))
    state.receive(snapshot("football.live", 0, None))
    state.connection_lost()
    assert not state.connected
    (frame,) = state.connection_made()
    assert frame.message["topics"] == ["match.1", "match.2", "football.live"]
    assert frame.message["since"] == {"match.1": 7, "football.live": 0}
    # the resumed replay applies once answered
    answer = {"type": "subscribed", "id": frame.message["id"], "topics": frame.message["topics"]}
    state.receive(answer)
    assert updates(state.receive(event("match.1", 8, {"a": 2})))[0].state == {"a": 2}


def test_resubscribe_is_split_to_the_gateway_limit():
    topics = [f"match.{n}" for n in range(250)]
    state = ClientState(topics, max_topics_per_request=100)
    frames = state.connection_made()
    assert [len(f.message["topics"]) for f in frames] == [100, 100, 50]
    assert len({f.message["id"] for f in frames}) == 3


def test_subscribe_while_disconnected_waits_for_the_connection():
    state = ClientState()
    assert state.subscribe(["match.1"]) == []
    (frame,) = state.connection_made()
    assert frame.message["topics"] == ["match.1"]
    (more,) = state.subscribe(["match.2", "match.2"])
    assert more.message["topics"] == ["match.2"]


def test_subscribing_again_resumes_from_the_view():
    state = connected("match.1")
    state.receive(snapshot("match.1", 5, {"a": 1}))
    (frame,) = state.subscribe(["match.1"])
    assert frame.message["since"] == {"match.1": 5}
    assert state.view("match.1").state == {"a": 1}


def test_unsubscribe_forgets_the_topic_and_drops_its_frames():
    state = connected("match.1", "match.2")
    state.receive(snapshot("match.1", 1, {"a": 1}))
    (frame,) = state.unsubscribe(["match.1", "match.3"])
    assert frame.message == {"type": "unsubscribe", "id": 2, "topics": ["match.1"]}
    assert state.topics == ["match.2"]
    assert state.receive(event("match.1", 2, {"a": 2})) == []
    assert state.receive({"type": "unsubscribed", "id": 2, "topics": ["match.1"]}) == []
    assert state.unsubscribe(["match.9"]) == []


def test_forbidden_topics_are_reported_once_and_dropped():
    state = ClientState(["match.1", "secret.1"])
    (frame,) = state.connection_made()
    request_id = frame.message["id"]
    forbidden = {"type": "error", "id": request_id, "code": "forbidden", "message": "secret.1"}
    assert state.receive(forbidden) == []
    (error,) = state.receive({"type": "subscribed", "id": request_id, "topics": ["match.1"]})
    assert error == GatewayError("forbidden", "secret.1", request_id, ("secret.1",))
    assert state.topics == ["match.1"]


def test_a_refused_request_drops_its_topics():
    state = ClientState(["match.1"])
    (frame,) = state.connection_made()
    refusal = {"type": "error", "id": frame.message["id"], "code": "too_many_topics"}
    refusal["message"] = "at most 1"
    (error,) = state.receive(refusal)
    assert (error.code, error.topics) == ("too_many_topics", ("match.1",))
    assert state.topics == []


def test_error_not_tied_to_a_request():
    state = connected("match.1")
    (error,) = state.receive({"type": "error", "id": None, "code": "bad_request", "message": "x"})
    assert error == GatewayError("bad_request", "x", None)


def test_reconnect_hint():
    state = connected("match.1")
    assert state.receive({"type": "reconnect", "after_ms": 1500, "reason": "drain"}) == [
        ReconnectHint(1500, "drain")
    ]


def test_ping_and_pong():
    state = connected("match.1")
    ping = state.ping(now=100.0)
    assert ping.message["type"] == "ping"
    assert state.ping_overdue(now=130.0, timeout=20.0)
    state.receive({"type": "pong", "id": ping.message["id"]})
    assert not state.ping_overdue(now=130.0, timeout=20.0)


@pytest.mark.parametrize(
    "frame",
    [
        "not a dict",
        [1, 2],
        {"type": "event", "topic": "match.1"},
        {"type": "event", "topic": "match.1", "seq": "2", "data": {}},
        {"type": "snapshot", "topic": "match.1", "seq": -1, "state": {}},
        {"type": "subscribed", "id": "x"},
        {"type": "something-new", "x": 1},
    ],
)
def test_malformed_frames_never_raise(frame):
    state = connected("match.1")
    state.receive(snapshot("match.1", 1, {"a": 1}))
    assert state.receive(frame) == []
    assert state.view("match.1").seq == 1


@pytest.mark.parametrize("topic", ["", "a..b", "match.*", "x" * 201, "a.b.c.d.e.f.g.h.i"])
def test_invalid_topics_are_refused_locally(topic):
    with pytest.raises(ValueError, match="invalid topic"):
        ClientState([topic])
    with pytest.raises(ValueError, match="invalid topic"):
        ClientState().subscribe([topic])


# --- recorded sequences, shared with the browser client's tests (tests/js/) ----


def normalised(output):
    if isinstance(output, Update):
        fields = ("topic", "seq", "kind", "state", "snapshot")
        return {"update": {name: getattr(output, name) for name in fields}}
    if isinstance(output, Send):
        return {"send": output.message}
    if isinstance(output, GatewayError):
        return {"error": {"code": output.code, "topics": list(output.topics)}}
    if isinstance(output, ReconnectHint):
        return {"reconnect": output.after_ms}
    if isinstance(output, Welcomed):
        return {"welcomed": output.session}
    raise AssertionError(f"unexpected output {output!r}")


def step(state, given):
    if "connect" in given:
        return state.connection_made()
    if "lost" in given:
        state.connection_lost()
        return []
    if "subscribe" in given:
        return state.subscribe(given["subscribe"])
    if "unsubscribe" in given:
        return state.unsubscribe(given["unsubscribe"])
    if "flush" in given:
        return state.flush()
    return state.receive(given["receive"])


@pytest.mark.parametrize(
    "sequence", SEQUENCES["sequences"], ids=[s["name"] for s in SEQUENCES["sequences"]]
)
def test_recorded_sequence(sequence):
    state = ClientState(sequence["topics"])
    for index, given in enumerate(sequence["steps"]):
        outputs = [normalised(output) for output in step(state, given)]
        assert outputs == given["out"], f"step {index}: {given}"
    views = {view.topic: [view.seq, view.state] for view in state.views.values()}
    assert views == sequence["views"]


def test_auth_request_is_answered_by_authed_or_an_error_with_its_id():
    state = ClientState(["match.1"])
    state.connection_made()
    send = state.authenticate("fresh.jwt.token")
    assert send.message == {"type": "auth", "id": send.message["id"], "token": "fresh.jwt.token"}
    request_id = send.message["id"]
    assert state.receive({"type": "authed", "id": request_id, "exp": 1900000000}) == [
        Authed(request_id, 1900000000)
    ]
    refused = state.authenticate("bad").message["id"]
    [error] = state.receive(
        {"type": "error", "id": refused, "code": "unauthorized", "message": "invalid token"}
    )
    assert isinstance(error, GatewayError) and error.request_id == refused
    assert error.code == "unauthorized" and error.topics == ()


def test_many_gaps_at_once_go_as_one_resubscribe():
    topics = [f"match.{n}" for n in range(41)]
    state = connected(*topics)
    for topic in topics:
        state.receive(snapshot(topic, 1, {"n": 1}))
    for topic in topics:
        assert state.receive(event(topic, 3, {"n": 3})) == []
    assert state.resubscribe_due
    (frame,) = sends(state.flush())
    assert frame["topics"] == topics
    assert frame["since"] == dict.fromkeys(topics, 1)
    assert not state.resubscribe_due and state.flush() == []


def test_rate_limited_resubscribe_never_drops_a_held_topic():
    state = connected("match.1")
    state.receive(snapshot("match.1", 1, {"n": 1}))
    (frame,) = sends(gap(state, event("match.1", 3, {"n": 3})))
    limited = {"type": "error", "id": frame["id"], "code": "rate_limited", "message": "slow"}
    (error,) = state.receive(limited)
    assert error == GatewayError("rate_limited", "slow", frame["id"], ())
    assert state.topics == ["match.1"] and state.resubscribe_due
    # later reconnects still hold it, resuming from its position
    state.connection_lost()
    (again,) = state.connection_made()
    assert again.message["topics"] == ["match.1"] and again.message["since"] == {"match.1": 1}
