"""Delivery through a real gateway on a real nats-server, real WebSockets."""

from __future__ import annotations

import asyncio
import time

import nats.js.errors
import pytest

from scorecast.protocol.envelope import encode_envelope
from scorecast.protocol.topics import subject_for
from tests.support import RawPublisher, Recorder, check_sequence, create_stream, ws_url


async def test_welcome_snapshot_then_events(gateway, js):
    publisher = RawPublisher(js)
    await publisher.publish("match.1", {"score": "0-0"})
    client = await Recorder.open(ws_url(gateway))
    welcome = await client.wait_for(lambda m: m["type"] == "welcome")
    assert welcome["protocol"] == 1 and welcome["node"] == "test" and welcome["session"]
    await client.send({"type": "subscribe", "id": 1, "topics": ["match.1", "match.1"]})
    subscribed = await client.wait_for(lambda m: m["type"] == "subscribed")
    assert subscribed == {"type": "subscribed", "id": 1, "topics": ["match.1"]}
    snapshot = await client.wait_for(lambda m: m["type"] == "snapshot")
    assert snapshot["seq"] == 1 and snapshot["state"] == {"score": "0-0"}
    for goal in ("1-0", "2-0"):
        await publisher.publish("match.1", {"score": goal}, kind="goal")
    last = await client.wait_for(lambda m: m.get("seq") == 3)
    assert last["type"] == "event" and last["kind"] == "goal" and last["data"] == {"score": "2-0"}
    assert check_sequence(client.of("match.1")) == 3
    await client.close()


async def test_empty_topic_snapshot_and_first_event(gateway, js):
    client = await Recorder.open(ws_url(gateway))
    await client.send({"type": "subscribe", "id": 7, "topics": ["match.empty"]})
    snapshot = await client.wait_for(lambda m: m["type"] == "snapshot")
    assert snapshot == {
        "type": "snapshot",
        "topic": "match.empty",
        "seq": 0,
        "ts": None,
        "state": None,
    }
    await RawPublisher(js).publish("match.empty", {"a": 1})
    event = await client.wait_for(lambda m: m["type"] == "event")
    assert event["seq"] == 1
    await client.close()


async def test_unsubscribe_stops_events_and_ping(gateway, js):
    publisher = RawPublisher(js)
    client = await Recorder.open(ws_url(gateway))
    await client.send({"type": "subscribe", "id": 1, "topics": ["match.2"]})
    await client.wait_for(lambda m: m["type"] == "snapshot")
    await client.send({"type": "unsubscribe", "id": 2, "topics": ["match.2", "match.none"]})
    answer = await client.wait_for(lambda m: m["type"] == "unsubscribed")
    assert answer["topics"] == ["match.2", "match.none"]
    await publisher.publish("match.2", {"x": 1})
    await client.send({"type": "ping", "id": 3})
    assert (await client.wait_for(lambda m: m["type"] == "pong"))["id"] == 3
    assert not [m for m in client.messages if m["type"] == "event"]
    assert set(gateway.node.hub.topics) == set(gateway.node.core.lingering) == {"match.2"}
    await client.close()


async def test_resubscribe_restarts_with_new_snapshot(gateway, js):
    publisher = RawPublisher(js)
    await publisher.publish("match.3", {"x": 1})
    client = await Recorder.open(ws_url(gateway))
    await client.send({"type": "subscribe", "id": 1, "topics": ["match.3"]})
    await client.wait_for(lambda m: m["type"] == "snapshot")
    await client.send({"type": "subscribe", "id": 2, "topics": ["match.3"]})
    await client.wait_for(lambda m: m["type"] == "subscribed" and m["id"] == 2)
    await publisher.publish("match.3", {"x": 2})
    await client.wait_for(lambda m: m["type"] == "event")
    snapshots = [m for m in client.of("match.3") if m["type"] == "snapshot"]
    assert len(snapshots) == 2
    assert check_sequence(client.of("match.3")) == 2
    await client.close()


async def test_fifty_clients_each_get_exactly_their_topics(gateway, js):
    publisher = RawPublisher(js)
    topics = [f"match.{n}" for n in range(10)]
    for topic in topics:
        await publisher.publish(topic, {"minute": 0})
    clients = []
    for index in range(50):
        mine = [topics[(index + k) % 10] for k in range(1 + index % 4)]
        client = await Recorder.open(ws_url(gateway))
        await client.send({"type": "subscribe", "id": index, "topics": mine})
        clients.append((client, mine))
    for client, mine in clients:
        for topic in mine:
            await client.wait_for(lambda m, t=topic: m["type"] == "snapshot" and m["topic"] == t)
    for minute in range(1, 21):
        await asyncio.gather(*(publisher.publish(t, {"minute": minute}) for t in topics))
    for client, mine in clients:
        for topic in mine:
            await client.wait_for(lambda m, t=topic: m.get("topic") == t and m.get("seq") == 21)
            assert check_sequence(client.of(topic)) == 21
        assert {m["topic"] for m in client.messages if "topic" in m} == set(mine)
    await asyncio.gather(*(client.close() for client, _ in clients))


async def test_gateway_started_before_the_stream_exists_waits_for_publishers(gateway, nc):
    client = await Recorder.open(ws_url(gateway))
    await client.send({"type": "subscribe", "id": 1, "topics": ["match.early"]})
    snapshot = await client.wait_for(lambda m: m["type"] == "snapshot")
    assert snapshot["seq"] == 0 and snapshot["state"] is None
    js = nc.jetstream()
    await create_stream(js)  # the publisher arrives and creates SCORES
    await RawPublisher(js).publish("match.early", {"kickoff": True})
    event = await client.wait_for(lambda m: m["type"] == "event")
    assert event["seq"] == 1 and event["data"] == {"kickoff": True}
    await client.close()


async def test_gateway_started_before_nats_serves_health_then_connects(nats_server, tmp_path):
    from scorecast.gateway.server import Gateway
    from scorecast.gateway.settings import GatewaySettings

    nats_server.stop()
    gw = Gateway(GatewaySettings(nats=(nats_server.url,), port=0))
    starting = asyncio.create_task(gw.start())
    await asyncio.sleep(0.5)
    assert not starting.done() and not gw.node.ready
    nats_server.start()
    await asyncio.wait_for(starting, 15)
    assert gw.node.ready
    await gw.stop()


async def test_a_publish_jetstream_refused_never_reaches_clients(gateway, js, nc):
    """The loser of a race on expected-last-subject-sequence is not an event."""
    publisher = RawPublisher(js)
    await publisher.publish("match.race", {"n": 1})
    client = await Recorder.open(ws_url(gateway))
    await client.send({"type": "subscribe", "id": 1, "topics": ["match.race"]})
    await client.wait_for(lambda m: m["type"] == "snapshot")
    loser = encode_envelope("match.race", 2, time.time(), "goal", {"n": "loser"}, {"n": "loser"})
    with pytest.raises(nats.js.errors.APIError):
        await js.publish(
            subject_for("match.race"),
            loser,
            headers={"Nats-Expected-Last-Subject-Sequence": "999", "Nats-Msg-Id": "loser"},
        )
    await publisher.publish("match.race", {"n": 2})
    event = await client.wait_for(lambda m: m["type"] == "event")
    assert event["seq"] == 2 and event["data"] == {"n": 2}
    assert check_sequence(client.of("match.race")) == 2
    await client.close()


async def test_stream_without_republish_is_followed_on_scores_subjects(gateway_settings, nc):
    """A stream set up by a publisher that knows only PROTOCOL.md still works."""
    from scorecast.gateway.server import Gateway

    js = nc.jetstream()
    await js.add_stream(name="SCORES", subjects=["scores.>"], max_msgs_per_subject=1000)
    gw = Gateway(gateway_settings)
    await gw.start()
    assert gw.broker.live_prefix == "scores."
    client = await Recorder.open(ws_url(gw))
    await client.send({"type": "subscribe", "id": 1, "topics": ["match.plain"]})
    await client.wait_for(lambda m: m["type"] == "snapshot")
    await RawPublisher(js).publish("match.plain", {"n": 1})
    assert (await client.wait_for(lambda m: m["type"] == "event"))["seq"] == 1
    await client.close()
    await gw.stop()
