"""The whole push path: simulator -> JetStream -> gateway -> 50 WebSockets."""

from __future__ import annotations

import asyncio

import orjson

from scorecast.protocol import STREAM_NAME
from scorecast.protocol.merge_patch import apply_patch
from scorecast.protocol.topics import subject_for
from scorecast.publishers.settings import PublisherSettings, SimulatorSettings
from scorecast.publishers.simulator import run_simulator
from tests.support import Recorder, check_sequence, scrape_metrics, ws_url

MATCHES = [f"match.{1000 + n}" for n in range(6)]
TOPICS = [*MATCHES, "football.live"]


def local_state(frames: list[dict]):
    state = None
    for frame in frames:
        state = frame["state"] if frame["type"] == "snapshot" else apply_patch(state, frame["data"])
    return state


async def test_simulator_to_fifty_clients_in_order_and_gap_free(nats_server, gateway, nc):
    stop = asyncio.Event()
    simulator = asyncio.create_task(
        run_simulator(
            PublisherSettings(nats=(nats_server.url,)),
            SimulatorSettings(matches=6, minute_seconds=0.01, seed=7),
            stop=stop,
        )
    )
    await asyncio.sleep(0.5)  # the stream exists and matches are under way
    clients = []
    for index in range(50):
        mine = sorted({TOPICS[(index * 3 + k) % len(TOPICS)] for k in range(1 + index % 4)})
        client = await Recorder.open(ws_url(gateway))
        await client.send({"type": "subscribe", "id": index, "topics": mine})
        clients.append((client, mine))
    await asyncio.sleep(2.0)
    stop.set()
    await asyncio.wait_for(simulator, 10)

    js = nc.jetstream()
    final = {}
    for topic in TOPICS:
        stored = await js.get_last_msg(STREAM_NAME, subject_for(topic))
        final[topic] = orjson.loads(stored.data)
    for client, mine in clients:
        for topic in mine:
            last = final[topic]["seq"]
            await client.wait_for(lambda m, t=topic, s=last: m.get("topic") == t and m["seq"] == s)
            frames = client.of(topic)
            assert frames[0]["type"] == "snapshot"
            assert check_sequence(frames) == last
            assert local_state(frames) == final[topic]["state"]
        assert {m["topic"] for m in client.messages if "topic" in m} == set(mine)
    events = sum(len(client.messages) for client, _ in clients)
    assert events > 50 * 5
    figures = await asyncio.to_thread(scrape_metrics, gateway.port)
    assert figures["scorecast_connections"] == 50
    assert figures["scorecast_connections_opened_total"] == 50
    assert figures["scorecast_topics"] == len(TOPICS)
    assert figures["scorecast_messages_in_total"] >= sum(f["seq"] for f in final.values()) / 2
    delivered = sum(m["type"] == "event" for client, _ in clients for m in client.messages)
    assert figures["scorecast_deliveries_total"] == delivered
    assert figures["scorecast_bytes_out_total"] > 0
    assert figures["scorecast_publish_to_send_seconds_count"] > 0
    assert figures["scorecast_snapshots_loaded_total"] == len(TOPICS)
    assert figures["scorecast_nats_connected"] == 1
    await asyncio.gather(*(client.close() for client, _ in clients))
