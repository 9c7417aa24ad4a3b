"""Fault injection against real processes: ``make test-faults``.

Each scenario runs a real ``scorecast gateway`` process on real nats-servers,
drives raw-protocol clients through a fault, then checks every client's
frames (no gap, duplicate or step back: PROTOCOL.md section 4) and its final
state against the stream's newest message per topic, and prints one line of
figures (also appended to ``.faults-results.jsonl``). Any violation fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import time

import nats
import pytest

from scorecast.cluster import NatsCluster, ensure_scores_stream
from scorecast.loadtest.procstat import resident_bytes
from scorecast.protocol import STREAM_NAME
from tests.faults.harness import (
    MB,
    FaultClient,
    Feed,
    Figures,
    GatewayProcess,
    mismatches,
    open_clients,
    settle,
    stream_heads,
)

pytestmark = pytest.mark.timeout(240)


def spread(topics: list[str], clients: int, each: int) -> list[list[str]]:
    step = max(1, len(topics) // clients)
    return [[topics[(i * step + k) % len(topics)] for k in range(each)] for i in range(clients)]


async def finish(figures: Figures, gateway: GatewayProcess, before: int, clients, feed, js):
    topics = sorted({topic for client in clients for topic in client.topics})
    heads = await stream_heads(js, topics)
    await settle(clients, heads, timeout=60)
    figures.tally(clients)
    figures.state_mismatches = mismatches(clients, heads)
    figures.events_published = feed.published
    for client in clients:
        client.close()
    await asyncio.sleep(2)
    figures.memory(gateway, before)
    gateway.stop()
    figures.report()


async def test_nats_frozen_for_10_seconds(nats_server, js):
    started = time.monotonic()
    figures = Figures("nats_frozen_10s")
    gateway = GatewayProcess([nats_server.url])
    await gateway.ready()
    topics = [f"match.f{i}" for i in range(20)]
    feed = Feed(js)
    await feed.burst(topics, 40)
    clients = await open_clients(gateway.port, spread(topics, 100, 5))
    before = gateway.rss()
    stop = asyncio.Event()
    publishing = asyncio.create_task(feed.steady(topics, rate=400, stop=stop))
    await asyncio.sleep(3)
    os.kill(nats_server.process.pid, signal.SIGSTOP)
    frozen, unready_after = time.monotonic(), None
    try:
        while time.monotonic() - frozen < 10:
            status, _ = await gateway.http("/readyz")
            if status == 503 and unready_after is None:
                unready_after = round(time.monotonic() - frozen, 1)
            await asyncio.sleep(0.25)
    finally:
        os.kill(nats_server.process.pid, signal.SIGCONT)
    thawed = time.monotonic()
    while (await gateway.http("/readyz"))[0] != 200 and time.monotonic() - thawed < 30:
        await asyncio.sleep(0.25)
    ready_after = round(time.monotonic() - thawed, 1)
    await asyncio.sleep(3)
    stop.set()
    await publishing
    figures.notes = {"readyz_503_after_s": unready_after, "ready_again_after_s": ready_after,
                     "publish_retries": feed.retries}  # fmt: skip
    if unready_after is None:
        figures.violations.append("readyz stayed 200 through a 10 s freeze")
    figures.seconds = time.monotonic() - started
    await finish(figures, gateway, before, clients, feed, js)


@pytest.mark.parametrize("topic_count", [1, 200])
async def test_burst_of_20000_events(nats_server, js, topic_count):
    started = time.monotonic()
    figures = Figures(f"burst_20000_events_{topic_count}_topics")
    gateway = GatewayProcess([nats_server.url])
    await gateway.ready()
    topics = [f"match.b{i}" for i in range(topic_count)]
    feed = Feed(js)
    await feed.burst(topics, topic_count)
    # one hot topic: 20 clients (1 M frames to parse would slow this process, not the gateway)
    count = 20 if topic_count == 1 else 50
    clients = await open_clients(gateway.port, spread(topics, count, min(20, topic_count)))
    before = gateway.rss()
    burst_started = time.monotonic()
    await feed.burst(topics, 20_000)
    figures.notes = {"publish_rate": round(20_000 / (time.monotonic() - burst_started))}
    figures.seconds = time.monotonic() - started
    await finish(figures, gateway, before, clients, feed, js)


async def test_gateway_stalled_through_a_burst(nats_server, js):
    started = time.monotonic()
    figures = Figures("gateway_sigstop_through_10000_events")
    gateway = GatewayProcess([nats_server.url])
    await gateway.ready()
    topics = [f"match.s{i}" for i in range(20)]
    feed = Feed(js, pad=200)
    await feed.burst(topics, 20)
    clients = await open_clients(gateway.port, spread(topics, 50, 5))
    before = gateway.rss()
    os.kill(gateway.pid, signal.SIGSTOP)
    stalled = time.monotonic()
    try:
        await feed.burst(topics, 10_000)
        await asyncio.sleep(2)
    finally:
        os.kill(gateway.pid, signal.SIGCONT)
    figures.notes = {"stalled_s": round(time.monotonic() - stalled, 1)}
    figures.seconds = time.monotonic() - started
    await finish(figures, gateway, before, clients, feed, js)


async def test_jetstream_leader_killed(tmp_path):
    started = time.monotonic()
    figures = Figures("jetstream_leader_killed_3_nodes")
    cluster = NatsCluster(3, base_dir=str(tmp_path / "cluster"),
                          binary=os.environ.get("NATS_SERVER_BIN"))  # fmt: skip
    cluster.start()
    try:
        await cluster.wait_for_jetstream()
        await ensure_scores_stream(cluster.nats_url, replicas=3)
        nc = await nats.connect(servers=cluster.urls, max_reconnect_attempts=-1,
                                reconnect_time_wait=0.2)  # fmt: skip
        js = nc.jetstream(timeout=5)
        gateway = GatewayProcess(cluster.urls)
        await gateway.ready()
        topics = [f"match.l{i}" for i in range(10)]
        feed = Feed(js)
        await feed.burst(topics, 10)
        clients = await open_clients(gateway.port, spread(topics, 50, 5))
        before = gateway.rss()
        stop = asyncio.Event()
        publishing = asyncio.create_task(feed.steady(topics, rate=300, stop=stop))
        await asyncio.sleep(3)
        leader = (await js.stream_info(STREAM_NAME)).cluster.leader
        index = [server.name for server in cluster.servers].index(leader)
        cluster.kill(index)
        await asyncio.sleep(8)
        stop.set()
        await publishing
        new_leader = (await js.stream_info(STREAM_NAME)).cluster.leader
        figures.notes = {"killed": leader, "new_leader": new_leader,
                         "publish_retries": feed.retries}  # fmt: skip
        figures.seconds = time.monotonic() - started
        await finish(figures, gateway, before, clients, feed, js)
        await nc.close()
    finally:
        cluster.stop()


async def test_churn_soak(nats_server, js):
    started = time.monotonic()
    soak = float(os.environ.get("SCORECAST_FAULTS_SOAK", "60"))
    figures = Figures(f"churn_soak_{soak:.0f}s")
    gateway = GatewayProcess([nats_server.url])
    await gateway.ready()
    topics = [f"match.c{i}" for i in range(20)]
    feed = Feed(js)
    await feed.burst(topics, 20)
    clients = [FaultClient(t) for t in spread(topics, 100, 5)]
    for client in clients:  # one round to reach a steady state, then the baseline
        await client.connect_to(gateway.port)
        client.close()
    await asyncio.sleep(2)
    before = gateway.rss()
    stop = asyncio.Event()
    publishing = asyncio.create_task(feed.steady(topics, rate=100, stop=stop))
    connections = 0
    rng = random.Random(7)

    async def churn(client: FaultClient) -> None:
        nonlocal connections
        while time.monotonic() - started < soak:
            await client.connect_to(gateway.port)
            connections += 1
            await asyncio.sleep(rng.uniform(0.1, 1.0))
            client.close()
            await client.lost.wait()

    await asyncio.gather(*(churn(client) for client in clients))
    stop.set()
    await publishing
    await asyncio.sleep(5)
    after_churn = gateway.rss()
    for client in clients:  # back once more: since brings each up to date
        await client.connect_to(gateway.port)
    figures.notes = {"connections": connections, "rss_5s_after_all_left_mb":
                     round(after_churn / MB, 1)}  # fmt: skip
    if after_churn - before > 16 * MB:
        figures.violations.append(f"RSS grew {(after_churn - before) / MB:.1f} MB over the soak")
    figures.seconds = time.monotonic() - started
    await finish(figures, gateway, before, clients, feed, js)


async def test_slow_clients_at_scale(nats_server, js):
    started = time.monotonic()
    figures = Figures("slow_clients_200_beside_50")
    gateway = GatewayProcess([nats_server.url], "--slow-grace", "8")
    await gateway.ready()
    topic = "match.hot"
    feed = Feed(js, pad=1000)
    await feed.burst([topic], 1)
    normal = await open_clients(gateway.port, [[topic]] * 50)
    recovering = await open_clients(gateway.port, [[topic]] * 100, reading=False)
    stalled = await open_clients(gateway.port, [[topic]] * 100, reading=False)
    before = gateway.rss()
    burst = asyncio.create_task(feed.burst([topic], 5_000))  # 5 MB per client
    await asyncio.sleep(1)
    for client in recovering:  # these read again while conflating, within the grace
        client.read_again()
    # the others stay silent past the grace: closed 4008; they read again once
    # the gateway has closed them all (a phone back in coverage)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        metrics = await gateway.http("/metrics")
        closes = [line for line in metrics[1].splitlines()
                  if line.startswith("scorecast_slow_closes_total")]  # fmt: skip
        if closes and float(closes[0].split()[1]) >= len(stalled):
            break
        await asyncio.sleep(0.2)
    for client in stalled:
        client.read_again()
    await burst
    for client in stalled:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(client.lost.wait(), 30)
    heads = await stream_heads(js, [topic])
    await settle(normal + recovering, heads, timeout=60)
    figures.tally(normal + recovering + stalled)
    figures.state_mismatches = mismatches(normal + recovering, heads)
    closed = sum(1 for client in stalled if client.transport is None)
    closed_4008 = sum(1 for client in stalled if client.close_code == 4008)
    figures.events_published = feed.published
    head = heads[topic]["seq"]
    figures.notes = {
        "stalled_closed": closed,
        "stalled_saw_4008": closed_4008,
        "recovering_snapshots": sum(c.snapshots for c in recovering),
        "groups": {
            name: {
                "closed": sum(1 for c in group if c.transport is None),
                "codes": sorted({str(c.close_code) for c in group}),
                "lost_by": sorted({str(c.lost_by)[:80] for c in group}),
                "at_head": sum(1 for c in group if c.positions.seqs.get(topic) == head),
            }
            for name, group in (("normal", normal), ("recovering", recovering))
        },
    }
    if closed != len(stalled):
        figures.violations.append(f"{len(stalled) - closed} stalled clients never closed")
    for client in normal + recovering:
        client.close()
    await asyncio.sleep(2)
    figures.memory(gateway, before)
    gateway.stop()
    figures.seconds = time.monotonic() - started
    figures.report()


async def _post(port: int, body: bytes, *, content_type: str = "application/json") -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        f"POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
        + body
    )
    answer = await asyncio.wait_for(reader.read(), 30)
    writer.close()
    return int(answer.split()[1]) if answer else 0


async def _cut_after(port: int, head: bytes, trickle: bytes, limit: float) -> float | None:
    """Send ``head``, then ``trickle`` one byte per second; seconds until the
    server answered or hung up, None when it still listened after ``limit``."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    started = time.monotonic()
    writer.write(head)
    try:
        for byte in trickle:
            if time.monotonic() - started > limit:
                return None
            writer.write(bytes([byte]))
            await writer.drain()
            with contextlib.suppress(TimeoutError):
                if await asyncio.wait_for(reader.read(1), 1.0) or reader.at_eof():
                    return round(time.monotonic() - started, 1)
        return None
    except ConnectionError:
        return round(time.monotonic() - started, 1)
    finally:
        writer.close()


async def test_hostile_ingest_bodies(nats_server, js):
    """PROTOCOL.md section 8: bounded whatever the body; a clear 4xx, never a
    5xx, never a connection held by a trickling client."""
    import subprocess
    import sys

    from scorecast.natsserver import free_port

    started = time.monotonic()
    figures = Figures("hostile_ingest_bodies")
    port = free_port()
    ingest = subprocess.Popen(
        [sys.executable, "-m", "scorecast.cli", "--log-level", "error", "ingest",
         "--nats", nats_server.url, "--port", str(port)],
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                status = await _post(port, b'{"topic": "match.h", "kind": "k", "data": {"n": 1}}')
                break
            except OSError:
                assert time.monotonic() < deadline, "ingest never listened"
                await asyncio.sleep(0.2)
        answers = {"valid": status}
        rss_before = resident_bytes(ingest.pid)
        deep = {"n": 1}
        for _ in range(300):
            deep = {"d": deep}
        item = {"topic": "match.h", "kind": "k", "data": deep}
        answers["nested_300"] = await _post(port, json_bytes(item))
        answers["int_2e70"] = await _post(
            port, b'{"topic": "match.h", "kind": "k", "data": {"n": 1180591620717411303424}}'
        )
        answers["text_plain"] = await _post(
            port, b'{"topic": "match.h", "kind": "k", "data": {"n": 2}}', content_type="text/plain"
        )
        head = (
            b"POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100000\r\n\r\n"
        )
        slow_body = await _cut_after(port, head, b"[" + b" " * 200, limit=25)
        slow_head = await _cut_after(port, b"POST /v1/events HTTP/1.1\r\n", b"X" * 200, limit=25)
        answers["after"] = await _post(port, b'{"topic": "match.h", "kind": "k", "data": {"n": 3}}')
        figures.notes = {"statuses": answers, "slow_body_cut_after_s": slow_body,
                         "slow_head_cut_after_s": slow_head}  # fmt: skip
        for name, status in answers.items():
            expected_ok = name in ("valid", "after")
            if expected_ok and status != 202:
                figures.violations.append(f"{name}: {status}")
            if not expected_ok and not 400 <= status < 500:
                figures.violations.append(f"{name}: {status} (wanted a 4xx)")
        if slow_body is None:
            figures.violations.append("a 1 byte/s body was never cut")
        if slow_head is None:
            figures.violations.append("1 byte/s headers were never cut")
        figures.events_published = 2
        figures.rss_before_mb = round(rss_before / MB, 1)
        figures.rss_after_mb = figures.rss_peak_mb = round(resident_bytes(ingest.pid) / MB, 1)
    finally:
        ingest.send_signal(signal.SIGINT)
        ingest.wait(15)
    figures.seconds = time.monotonic() - started
    figures.report()


def json_bytes(value) -> bytes:
    import json

    return json.dumps(value).encode()
