"""Gateways as real processes: horizontal scale on one NATS, worker
processes sharing a port, graceful drain on SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
import urllib.request

import pytest

from scorecast.natsserver import free_port
from tests.support import RawPublisher, Recorder, check_sequence, scrape_metrics, start_gateway


@pytest.fixture
def processes():
    started: list[subprocess.Popen] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
        process.wait()


async def test_two_gateway_processes_deliver_the_same_sequences(nats_server, js, processes):
    ports = [free_port(), free_port()]
    for port in ports:
        processes.append(
            await asyncio.to_thread(start_gateway, nats_server.url, port, "--workers", "1")
        )
    publisher = RawPublisher(js)
    topics = ["match.10", "match.11"]
    for topic in topics:
        await publisher.publish(topic, {"minute": 0})
    clients = []
    for index in range(20):
        client = await Recorder.open(f"ws://127.0.0.1:{ports[index % 2]}/ws")
        await client.send({"type": "subscribe", "id": 1, "topics": topics})
        clients.append(client)
    for client in clients:
        await client.wait_for(lambda m: m["type"] == "snapshot" and m["topic"] == "match.11")
    for minute in range(1, 31):
        for topic in topics:
            await publisher.publish(topic, {"minute": minute})
    for client in clients:
        for topic in topics:
            await client.wait_for(lambda m, t=topic: m.get("topic") == t and m.get("seq") == 31)
            assert check_sequence(client.of(topic)) == 31
    nodes = {client.messages[0]["node"] for client in clients}
    assert len(nodes) == 2
    events = [[m for m in client.of("match.10") if m["type"] == "event"] for client in clients]
    assert all(e == events[0] for e in events)
    await asyncio.gather(*(client.close() for client in clients))


async def test_workers_share_a_port_and_metrics_sum_the_group(nats_server, js, processes):
    port = free_port()
    processes.append(
        await asyncio.to_thread(start_gateway, nats_server.url, port, "--workers", "2")
    )
    for _ in range(100):  # /readyz answered by one worker; wait for both
        if (await asyncio.to_thread(scrape_metrics, port))["scorecast_workers"] == 2:
            break
        await asyncio.sleep(0.1)
    publisher = RawPublisher(js)
    await publisher.publish("match.20", {"minute": 0})
    clients = []
    for _ in range(40):
        client = await Recorder.open(f"ws://127.0.0.1:{port}/ws")
        await client.send({"type": "subscribe", "id": 1, "topics": ["match.20"]})
        clients.append(client)
    for client in clients:
        await client.wait_for(lambda m: m["type"] == "snapshot")
    await publisher.publish("match.20", {"minute": 1})
    for client in clients:
        await client.wait_for(lambda m: m.get("seq") == 2)
    assert len({client.messages[0]["node"] for client in clients}) == 2
    await asyncio.sleep(1.5)  # each worker publishes its figures once a second
    figures = await asyncio.to_thread(scrape_metrics, port)
    assert figures["scorecast_workers"] == 2
    assert figures["scorecast_connections"] == 40
    assert figures["scorecast_deliveries_total"] >= 40
    await asyncio.gather(*(client.close() for client in clients))


async def test_sigterm_drains_with_spread_hints_then_1012(nats_server, js, processes):
    port = free_port()
    gateway = await asyncio.to_thread(
        start_gateway, nats_server.url, port, "--workers", "1", "--drain-window", "2"
    )
    processes.append(gateway)
    clients = []
    for _ in range(200):
        client = await Recorder.open(f"ws://127.0.0.1:{port}/ws")
        await client.send({"type": "subscribe", "id": 1, "topics": ["match.30"]})
        clients.append(client)
    for client in clients:
        await client.wait_for(lambda m: m["type"] == "snapshot")
    started = time.monotonic()
    os.kill(gateway.pid, signal.SIGTERM)
    await asyncio.sleep(0.2)
    with pytest.raises(urllib.error.HTTPError) as caught:
        await asyncio.to_thread(urllib.request.urlopen, f"http://127.0.0.1:{port}/readyz")
    assert caught.value.code == 503

    async def closed_after(client: Recorder) -> float:
        await asyncio.wait_for(client.ws.wait_closed(), 10)
        return time.monotonic() - started

    closed_at = await asyncio.gather(*(closed_after(client) for client in clients))
    for client in clients:
        assert client.close_code == 1012
        hint = [m for m in client.messages if m["type"] == "reconnect"]
        assert len(hint) == 1 and hint[0]["reason"] and hint[0]["after_ms"] >= 0
    # spread over the 2 s window, not all at once
    assert max(closed_at) - min(closed_at) > 1.0
    assert await asyncio.to_thread(gateway.wait, 10) == 0
