"""Occupancy (PROTOCOL.md section 3): the sans-I/O counting and summing, and
the fleet-wide gauge across real gateway processes on one nats-server."""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import time

import nats
import orjson

from scorecast.gateway.occupancy import Fleet, Reporter, Watchers
from scorecast.natsserver import free_port
from tests.support import RawPublisher, Recorder, start_gateway
from tests.support_sse import SseReader

INTERVAL = 0.5

# --- sans-I/O -------------------------------------------------------------------


def test_reporter_lists_held_topics_and_zeros_once_for_those_left():
    reporter = Reporter()
    assert reporter.report({"a": 2, "b": 1}) == {"a": 2, "b": 1}
    assert reporter.report({"a": 3}) == {"a": 3, "b": 0}
    assert reporter.report({"a": 3}) == {"a": 3}
    assert reporter.report({}) == {"a": 0}


def test_fleet_sums_other_nodes_replaces_reports_and_expires_silent_nodes():
    fleet = Fleet("me", expiry_intervals=3)
    fleet.report("me", {"a": 100}, 1.0, 0.0)  # our own counts are live, not reported
    fleet.report("n1", {"a": 2, "b": 1}, 1.0, 0.0)
    fleet.report("n2", {"a": 5}, 1.0, 0.0)
    assert (fleet.remote("a"), fleet.remote("b")) == (7, 1)
    fleet.report("n1", {"a": 1, "b": 0}, 1.0, 1.0)
    assert (fleet.remote("a"), fleet.remote("b")) == (6, 0)
    assert fleet.expire(3.5) == ["n2"]  # silent since 0.0, three 1 s intervals
    assert fleet.remote("a") == 1
    fleet.report("n1", {}, 1.0, 4.0)  # a goodbye
    assert fleet.remote("a") == 0 and fleet.totals == {}


def test_watchers_are_told_on_change_at_most_once_per_gap():
    watchers = Watchers(min_gap=2.0)
    watchers.watch("c1", "t")
    assert watchers.due("t", 5, 0.0) == ["c1"]  # the first value at once
    assert watchers.due("t", 5, 0.1) == []  # unchanged
    assert watchers.due("t", 6, 1.0) == []  # changed, but within the gap
    watchers.watch("c2", "t")
    watchers.watch("c1", "t")  # asked again: still within the gap
    assert watchers.due("t", 6, 1.1) == ["c2"]  # a newcomer needs no wait
    assert watchers.due("t", 6, 2.0) == ["c1"]
    assert watchers.due("t", 7, 3.2) == ["c2"]
    assert sorted(watchers.due("t", 8, 4.0)) == ["c1"]
    watchers.forget("c1", "t")
    watchers.forget("c2", "t")
    assert watchers.topics() == [] and watchers.cohorts == {}


def test_watchers_cost_one_step_per_cohort_not_per_watcher():
    watchers = Watchers(min_gap=2.0)
    for n in range(10_000):
        watchers.watch(n, "t")
    assert len(watchers.due("t", 1, 0.0)) == 10_000
    assert len(watchers.cohorts["t"]) == 1
    assert watchers.due("t", 2, 1.0) == []


# --- real gateways ------------------------------------------------------------


async def watcher(port: int, topic: str) -> Recorder:
    client = await Recorder.open(f"ws://127.0.0.1:{port}/ws")
    await client.send({"type": "subscribe", "id": 1, "topics": [topic], "occupancy": True})
    await client.wait_for(lambda m: m["type"] == "snapshot")
    return client


async def subscribers(port: int, topic: str, count: int) -> list[Recorder]:
    clients = []
    for _ in range(count):
        client = await Recorder.open(f"ws://127.0.0.1:{port}/ws")
        await client.send({"type": "subscribe", "id": 1, "topics": [topic]})
        clients.append(client)
    for client in clients:
        await client.wait_for(lambda m: m["type"] == "snapshot")
    return clients


async def told(client: Recorder, topic: str, count: int, within: float) -> float:
    """Seconds until ``client`` was told ``count`` subscribers of ``topic``."""
    started = time.monotonic()
    await client.wait_for(
        lambda m: m["type"] == "occupancy" and m["topic"] == topic and m["subscribers"] == count,
        timeout=within,
    )
    return time.monotonic() - started


def gateway_process(nats_url: str, port: int, node: str):
    return start_gateway(
        nats_url, port, "--workers", "1", "--node", node,
        "--occupancy-interval", str(INTERVAL),
    )  # fmt: skip


async def test_occupancy_across_two_gateway_processes(nats_server, js):
    await RawPublisher(js).publish("match.1", {"n": 1})
    port_a, port_b = free_port(), free_port()
    a = await asyncio.to_thread(gateway_process, nats_server.url, port_a, "gw-a")
    b = await asyncio.to_thread(gateway_process, nats_server.url, port_b, "gw-b")
    try:
        watching = await watcher(port_a, "match.1")
        await told(watching, "match.1", 1, 5)
        # joins on the other gateway: right within 2 intervals (+ the 2 s gap)
        joined = await subscribers(port_b, "match.1", 3)
        sse = await SseReader.open(port_b, "?topics=match.1&occupancy=1")
        await told(watching, "match.1", 5, 2 * INTERVAL + 2.0 + 3)
        await sse.wait_for(lambda f: f["type"] == "occupancy" and f["subscribers"] == 5)
        snapshot = await asyncio.to_thread(_http_json, port_a, "/v1/topics/match.1")
        assert snapshot["subscribers"] == 5
        # leaves
        for client in joined[:2]:
            await client.close()
        await told(watching, "match.1", 3, 2 * INTERVAL + 2.0 + 3)
        # a killed gateway's clients leave the sum within a few intervals
        os.kill(b.pid, signal.SIGKILL)
        b.wait(10)
        await told(watching, "match.1", 1, 3 * INTERVAL + 2.0 + 3)
        frames = [m for m in watching.messages if m["type"] == "occupancy"]
        assert all(set(m) == {"type", "topic", "subscribers", "ts"} for m in frames)
        values = [m["subscribers"] for m in frames]
        assert all(x != y for x, y in itertools.pairwise(values)), values
        await watching.close()
    finally:
        for process in (a, b):
            if process.poll() is None:
                process.send_signal(signal.SIGINT)
                process.wait(10)


def _http_json(port: int, path: str) -> dict:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as answer:
        return orjson.loads(answer.read())


async def count_reports(nats_url: str, seconds: float) -> dict[str, int]:
    nc = await nats.connect(nats_url)
    counts: dict[str, int] = {}

    async def seen(msg):
        node = orjson.loads(msg.data)["node"]
        counts[node] = counts.get(node, 0) + 1

    await nc.subscribe("scorecast.occupancy.>", cb=seen)
    await asyncio.sleep(seconds)
    await nc.close()
    return counts


async def test_reports_per_interval_do_not_grow_with_clients(nats_server, js):
    await RawPublisher(js).publish("match.2", {"n": 1})
    port = free_port()
    process = await asyncio.to_thread(gateway_process, nats_server.url, port, "gw-count")
    try:
        few = await subscribers(port, "match.2", 10)
        with_few = await count_reports(nats_server.url, 10 * INTERVAL)
        many = await subscribers(port, "match.2", 990)
        with_many = await count_reports(nats_server.url, 10 * INTERVAL)
        # one report per interval, whatever the number of clients (10 vs 1,000)
        assert 6 <= with_few["gw-count"] <= 12, with_few
        assert 6 <= with_many["gw-count"] <= 12, with_many
        for client in few + many:
            await client.ws.close()
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(10)


async def test_occupancy_sums_the_workers_of_one_gateway(nats_server, js):
    await RawPublisher(js).publish("match.3", {"n": 1})
    port = free_port()
    process = await asyncio.to_thread(
        start_gateway, nats_server.url, port, "--workers", "2", "--node", "gw-w",
        "--occupancy-interval", str(INTERVAL),
    )  # fmt: skip
    try:
        watching = await watcher(port, "match.3")
        # connections land on either worker (SO_REUSEPORT); the gauge is the sum
        others = await subscribers(port, "match.3", 7)
        await told(watching, "match.3", 8, 2 * INTERVAL + 2.0 + 5)
        nodes = {(await told_node(port)) for _ in range(6)}
        assert nodes <= {"gw-w-w0", "gw-w-w1"}
        for client in others:
            await client.close()
        await told(watching, "match.3", 1, 2 * INTERVAL + 2.0 + 5)
        await watching.close()
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(10)


async def told_node(port: int) -> str:
    client = await Recorder.open(f"ws://127.0.0.1:{port}/ws")
    welcome = await client.wait_for(lambda m: m["type"] == "welcome")
    await client.close()
    return welcome["node"]
