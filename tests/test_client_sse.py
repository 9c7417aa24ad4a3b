"""The Python client over SSE and its occupancy callback, against a real
gateway and nats-server."""

from __future__ import annotations

import asyncio

import orjson

from scorecast.client import Occupancy, ScorecastClient, run_watch
from scorecast.client.sse import SseClient, sse_url
from tests.support import RawPublisher, ws_url


def test_sse_url():
    assert sse_url("ws://127.0.0.1:8080/ws") == "http://127.0.0.1:8080/sse"
    assert sse_url("wss://scores.example/ws") == "https://scores.example/sse"


async def test_sse_client_follows_topics_and_resumes_after_a_gap_free_reconnect(gateway, js):
    publisher = RawPublisher(js)
    await publisher.publish("match.1", {"n": 1})
    gauges: list[Occupancy] = []
    async with SseClient(
        ws_url(gateway), topics=["match.1"], occupancy=True, on_occupancy=gauges.append
    ) as client:
        updates = client.updates()
        first = await asyncio.wait_for(anext(updates), 10)
        assert (first.seq, first.state) == (1, {"n": 1})
        await publisher.publish("match.1", {"n": 2})
        second = await asyncio.wait_for(anext(updates), 10)
        assert (second.seq, second.kind) == (2, "update")
        for _ in range(100):
            if gauges:
                break
            await asyncio.sleep(0.05)
        assert gauges[0] == Occupancy("match.1", 1, gauges[0].ts)
        # the gateway ends every stream: the client comes back from where it was
        for connection in list(gateway.connections):
            connection.close(1001, "going away")
        await publisher.publish("match.1", {"n": 3})
        third = await asyncio.wait_for(anext(updates), 15)
        assert (third.seq, third.state) == (3, {"n": 3})
        assert client.state.counters.gaps == 0
        await client.subscribe("match.2")
        await publisher.publish("match.2", {"m": 1})
        fourth = await asyncio.wait_for(anext(updates), 15)
        assert (fourth.topic, fourth.seq) == ("match.2", 1)
        assert client.last_event_id == "match.1:3,match.2:1"


async def test_websocket_client_occupancy_callback(gateway, js):
    gauges: list[Occupancy] = []
    async with ScorecastClient(
        ws_url(gateway), topics=["match.5"], occupancy=True, on_occupancy=gauges.append
    ) as client:
        async with ScorecastClient(ws_url(gateway), topics=["match.5"]):
            for _ in range(100):
                if gauges and gauges[-1].subscribers == 2:
                    break
                await asyncio.sleep(0.05)
        assert gauges[-1].subscribers == 2 and client.subscribers["match.5"] == 2


async def test_run_watch_over_sse(gateway, js):
    publisher = RawPublisher(js)
    await publisher.publish("match.3", {"a": 1})
    lines: list[str] = []
    watching = asyncio.create_task(
        run_watch(ws_url(gateway), ["match.3"], count=2, seconds=20, out=lines.append, sse=True)
    )
    while not lines:
        await asyncio.sleep(0.05)
    await publisher.publish("match.3", {"a": 2})
    assert await watching == 0
    assert [orjson.loads(line)["seq"] for line in lines] == [1, 2]
