"""Recovery after a reconnect, and delivery through NATS faults, on real
nats-server processes and real gateways (PROTOCOL.md section 4)."""

from __future__ import annotations

import asyncio
import contextlib

import nats
import orjson

from scorecast.gateway.server import Gateway
from scorecast.protocol import STREAM_NAME
from scorecast.protocol.merge_patch import apply_patch
from scorecast.protocol.topics import subject_for
from tests.support import RawPublisher, Recorder, check_sequence, create_stream, ws_url


async def subscribed(gw: Gateway, topics: list[str], since: dict | None = None) -> Recorder:
    client = await Recorder.open(ws_url(gw))
    request = {"type": "subscribe", "id": 1, "topics": topics}
    if since is not None:
        request["since"] = since
    await client.send(request)
    await client.wait_for(lambda m: m["type"] == "subscribed")
    return client


async def publish_many(publisher: RawPublisher, topic: str, count: int) -> int:
    seq = 0
    for _ in range(count):
        seq = await publisher.publish(topic, {"n": publisher.seqs.get(topic, 0) + 1})
    return seq


async def test_reconnect_with_since_gets_exactly_the_missed_events(make_gateway, js):
    gw = await make_gateway()
    publisher = RawPublisher(js)
    await publish_many(publisher, "match.1", 5)
    warm = await subscribed(gw, ["match.1"])  # keeps the topic live at this node
    client = await subscribed(gw, ["match.1"])
    await client.wait_for(lambda m: m.get("seq") == 5)
    await client.close()
    await publish_many(publisher, "match.1", 5)
    again = await subscribed(gw, ["match.1"], since={"match.1": 5, "match.other": 3})
    await again.wait_for(lambda m: m.get("seq") == 10)
    await publish_many(publisher, "match.1", 1)
    await again.wait_for(lambda m: m.get("seq") == 11)
    frames = again.of("match.1")
    assert [(m["type"], m["seq"]) for m in frames] == [("event", s) for s in range(6, 12)]
    assert gw.node.stats.recoveries_memory == 1
    await again.close()
    await warm.close()


async def test_recovery_on_a_node_that_just_loaded_the_topic_reads_jetstream(make_gateway, js):
    gw = await make_gateway()
    publisher = RawPublisher(js)
    await publish_many(publisher, "match.7", 8)
    client = await subscribed(gw, ["match.7"], since={"match.7": 2})
    await client.wait_for(lambda m: m.get("seq") == 8)
    assert [(m["type"], m["seq"]) for m in client.of("match.7")] == [
        ("event", s) for s in range(3, 9)
    ]
    assert gw.node.stats.recoveries_jetstream == 1
    # the read filled the topic's memory: the next one back is answered from it
    second = await subscribed(gw, ["match.7"], since={"match.7": 1})
    await second.wait_for(lambda m: m.get("seq") == 8)
    assert [m["seq"] for m in second.of("match.7")] == list(range(2, 9))
    assert gw.node.stats.recoveries_jetstream == 1
    assert gw.node.stats.recoveries_memory == 1
    await asyncio.gather(client.close(), second.close())


async def test_a_topic_its_last_client_left_lingers_for_the_ones_coming_back(make_gateway, js):
    gw = await make_gateway(topic_linger=30.0)
    publisher = RawPublisher(js)
    await publish_many(publisher, "match.8", 3)
    client = await subscribed(gw, ["match.8"])
    await client.wait_for(lambda m: m.get("seq") == 3)
    await client.close()
    core = gw.node.core
    async with asyncio.timeout(5):
        while "match.8" not in core.lingering:
            await asyncio.sleep(0.01)
    await publish_many(publisher, "match.8", 4)  # the blip: events go on
    async with asyncio.timeout(5):
        while core.hub.topics["match.8"].seq < 7:  # still subscribed, kept current
            await asyncio.sleep(0.01)
    back = await subscribed(gw, ["match.8"], since={"match.8": 3})
    await back.wait_for(lambda m: m.get("seq") == 7)
    assert [(m["type"], m["seq"]) for m in back.of("match.8")] == [
        ("event", s) for s in range(4, 8)
    ]
    assert gw.node.stats.recoveries_memory == 1 and gw.node.stats.recoveries_jetstream == 0
    assert gw.node.figures()["topics_lingering"] == 0
    await back.close()


async def test_since_older_than_memory_is_read_from_jetstream_once(make_gateway, js):
    gw = await make_gateway(replay_buffer=4)
    publisher = RawPublisher(js)
    await publish_many(publisher, "match.2", 20)
    warm = await subscribed(gw, ["match.2"])  # the topic is live at this node
    await warm.wait_for(lambda m: m["type"] == "snapshot")
    clients = [await Recorder.open(ws_url(gw)) for _ in range(20)]
    for client in clients:
        await client.wait_for(lambda m: m["type"] == "welcome")
    request = {"type": "subscribe", "id": 2, "topics": ["match.2"], "since": {"match.2": 3}}
    await asyncio.gather(*(client.send(request) for client in clients))
    for client in clients:
        await client.wait_for(lambda m: m.get("seq") == 20)
        assert [m["seq"] for m in client.of("match.2")] == list(range(4, 21))
        assert all(m["type"] == "event" for m in client.of("match.2"))
    assert gw.node.stats.recoveries_jetstream == 1
    # a client arriving a moment later (a reconnect storm spreads over seconds)
    late = await subscribed(gw, ["match.2"], since={"match.2": 5})
    await late.wait_for(lambda m: m.get("seq") == 20)
    assert [m["seq"] for m in late.of("match.2")] == list(range(6, 21))
    assert gw.node.stats.recoveries_jetstream == 1
    await asyncio.gather(*(c.close() for c in [*clients, warm, late]))


async def test_since_older_than_the_stream_or_ahead_gets_a_snapshot(make_gateway, nc):
    js = nc.jetstream()
    await create_stream(js, history=5)
    gw = await make_gateway(replay_buffer=2)
    publisher = RawPublisher(js)
    await publish_many(publisher, "match.3", 12)
    old = await subscribed(gw, ["match.3"], since={"match.3": 1})
    snapshot = await old.wait_for(lambda m: m["type"] == "snapshot")
    assert snapshot["seq"] == 12 and snapshot["state"] == {"n": 12}
    ahead = await subscribed(gw, ["match.3"], since={"match.3": 99})
    snapshot = await ahead.wait_for(lambda m: m["type"] == "snapshot")
    assert snapshot["seq"] == 12
    await old.close()
    await ahead.close()


async def test_nats_restart_loses_nothing(make_gateway, nats_server, js):
    gw = await make_gateway()
    topics = ["match.4", "match.5"]
    clients = [await subscribed(gw, topics) for _ in range(5)]
    stop = asyncio.Event()
    published: dict[str, int] = {}

    async def publish_forever():
        connection = await nats.connect(
            nats_server.url, max_reconnect_attempts=-1, reconnect_time_wait=0.2
        )
        publisher = RawPublisher(connection.jetstream(timeout=1))
        while not stop.is_set():
            for topic in topics:
                seq = publisher.seqs.get(topic, 0) + 1
                with contextlib.suppress(Exception):
                    await publisher.publish(topic, {"n": seq}, seq=seq)
                    published[topic] = seq
                    continue
                publisher.seqs[topic] = seq - 1  # not stored: publish it again
                publisher.states[topic] = {"n": seq - 1} if seq > 1 else None
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.01)
        await connection.close()

    task = asyncio.create_task(publish_forever())
    await asyncio.sleep(1.0)
    nats_server.stop(kill=True)
    await asyncio.sleep(1.0)
    nats_server.start()
    await asyncio.sleep(2.0)
    stop.set()
    await task
    connection = await nats.connect(nats_server.url)
    stream = connection.jetstream()
    for topic in topics:
        last = await stream.get_last_msg(STREAM_NAME, subject_for(topic))
        final = orjson.loads(last.data)
        assert final["seq"] == published[topic]
        for client in clients:
            await client.wait_for(lambda m, t=topic, s=final["seq"]: m.get("topic") == t
                                  and m.get("seq") == s, timeout=15)  # fmt: skip
            assert check_sequence(client.of(topic)) == final["seq"]
            assert view_state(client.of(topic)) == final["state"]
    await connection.close()
    assert gw.broker.reconnects >= 1
    await asyncio.gather(*(client.close() for client in clients))


def view_state(frames: list[dict]):
    """A client's local state: the latest snapshot, merge-patched by events."""
    state = None
    for frame in frames:
        state = frame["state"] if frame["type"] == "snapshot" else apply_patch(state, frame["data"])
    return state


async def test_gateway_killed_clients_resume_on_another_without_loss(make_gateway, js):
    first, second = await make_gateway(node="a"), await make_gateway(node="b")
    publisher = RawPublisher(js)
    await publish_many(publisher, "match.6", 3)
    clients = [await subscribed(first, ["match.6"]) for _ in range(10)]
    for client in clients:
        await client.wait_for(lambda m: m.get("seq") == 3)
    await first.stop()  # the process dies: its sockets go
    await publish_many(publisher, "match.6", 4)
    resumed = []
    for client in clients:
        await asyncio.wait_for(client.ws.wait_closed(), 5)
        position = check_sequence(client.of("match.6"))
        resumed.append(await subscribed(second, ["match.6"], since={"match.6": position}))
    await publish_many(publisher, "match.6", 2)
    for before, after in zip(clients, resumed, strict=True):
        await after.wait_for(lambda m: m.get("seq") == 9)
        assert check_sequence(before.of("match.6") + after.of("match.6")) == 9
        assert [m["type"] for m in after.of("match.6")] == ["event"] * 6
    await asyncio.gather(*(client.close() for client in resumed))
