"""A three-node NATS cluster on loopback: a node dies, clients lose nothing.

Real nats-servers (``scorecast.cluster.NatsCluster``), real gateways, real
WebSockets. The node killed is the one gateway A is connected to, and it is
made the SCORES stream's leader first, so that its death costs both a client
reconnect and a JetStream leader election: the worst single failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time

import nats
import nats.errors
import pytest

from scorecast.cluster import NatsCluster, ensure_scores_stream, run_cluster
from scorecast.gateway.server import Gateway
from scorecast.gateway.settings import GatewaySettings
from scorecast.protocol import STREAM_NAME
from scorecast.protocol.nats_auth import NatsAuth
from scorecast.stack_settings import ClusterSettings
from tests.support import RawPublisher, Recorder, check_sequence

TOPICS = ("match.1", "match.2")
AFTER_KILL = 40  # events per topic acknowledged after the kill before publishing stops

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
def cluster(tmp_path):
    nodes = NatsCluster(
        3, base_dir=str(tmp_path / "cluster"), binary=os.environ.get("NATS_SERVER_BIN")
    )
    nodes.start()
    yield nodes
    nodes.stop()


async def start_gateway(cluster: NatsCluster, node: str, avoid: int | None = None) -> Gateway:
    """A gateway given every NATS URL (nats-py shuffles them); started again
    until it lands on a node other than ``avoid``."""
    for _ in range(12):
        gateway = Gateway(GatewaySettings(nats=tuple(cluster.urls), port=0, node=node))
        await gateway.start()
        if avoid is None or cluster.index_of(gateway.broker.nc.connected_url) != avoid:
            return gateway
        await gateway.stop()
    raise AssertionError(f"gateway {node} kept connecting to node {avoid}")


async def move_stream_leader(nc, cluster: NatsCluster, index: int) -> None:
    """Make node ``index`` the leader of SCORES (stepdown with a preferred peer)."""
    wanted = cluster.servers[index].name
    js = nc.jetstream(timeout=2.0)
    deadline = time.monotonic() + 20
    while (await js.stream_info(STREAM_NAME)).cluster.leader != wanted:
        assert time.monotonic() < deadline, f"{wanted} never became the SCORES leader"
        with contextlib.suppress(nats.errors.Error):
            await nc.request(
                f"$JS.API.STREAM.LEADER.STEPDOWN.{STREAM_NAME}",
                json.dumps({"placement": {"preferred": wanted}}).encode(),
                timeout=2.0,
            )
        await asyncio.sleep(0.5)


class Feed:
    """Publishes ``TOPICS`` round-robin, each event retried until acknowledged
    (same ``Nats-Msg-Id``, so a retry of a stored event is stored once)."""

    def __init__(self, js) -> None:
        self.publisher = RawPublisher(js)
        self.last = dict.fromkeys(TOPICS, 0)
        self.failures = 0
        self.running = True

    async def run(self) -> None:
        while self.running:
            for topic in TOPICS:
                seq = self.last[topic] + 1
                while True:
                    try:
                        await self.publisher.publish(topic, {"n": seq}, seq=seq)
                        break
                    except nats.errors.Error:  # no leader yet, timeout, reconnecting
                        self.failures += 1
                        await asyncio.sleep(0.1)
                self.last[topic] = seq
            await asyncio.sleep(0.01)

    async def until(self, count: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while min(self.last.values()) < count:
            assert time.monotonic() < deadline, f"publishing stalled at {self.last}"
            await asyncio.sleep(0.05)


async def subscribed_client(gateway: Gateway) -> Recorder:
    client = await Recorder.open(f"ws://127.0.0.1:{gateway.port}/ws")
    await client.send({"type": "subscribe", "id": 1, "topics": list(TOPICS)})
    for topic in TOPICS:
        await client.wait_for(lambda m, t=topic: m["type"] == "snapshot" and m["topic"] == t)
    return client


async def test_node_failure_loses_nothing(cluster):
    await cluster.wait_for_jetstream()
    await ensure_scores_stream(cluster.nats_url, replicas=3)
    nc = await nats.connect(
        servers=cluster.urls, reconnect_time_wait=0.2, max_reconnect_attempts=-1
    )
    gateways: list[Gateway] = []
    clients: list[Recorder] = []
    feed = Feed(nc.jetstream(timeout=1.0))
    publishing = None
    try:
        info = await nc.jetstream().stream_info(STREAM_NAME)
        assert info.config.num_replicas == 3 and len(info.cluster.replicas) == 2

        gateways.append(await start_gateway(cluster, "gw-a"))
        victim = cluster.index_of(gateways[0].broker.nc.connected_url)
        gateways.append(await start_gateway(cluster, "gw-b", avoid=victim))
        await move_stream_leader(nc, cluster, victim)
        clients = [await subscribed_client(gateway) for gateway in gateways]

        publishing = asyncio.create_task(feed.run())
        await feed.until(20, timeout=10)
        killed_at = dict(feed.last)
        cluster.kill(victim)
        await feed.until(max(killed_at.values()) + AFTER_KILL, timeout=40)
        feed.running = False
        await asyncio.wait_for(publishing, 10)

        for client in clients:
            for topic in TOPICS:
                await client.wait_for(
                    lambda m, t=topic: m.get("topic") == t and m.get("seq") == feed.last[t],
                    timeout=20,
                )
        for name, client in zip(("gw-a", "gw-b"), clients, strict=True):
            for topic in TOPICS:
                frames = client.of(topic)
                events = [m["seq"] for m in frames if m["type"] == "event"]
                assert events == list(range(1, feed.last[topic] + 1)), (
                    f"{name} {topic}: not every event once and in order "
                    f"(killed at {killed_at[topic]}, last {feed.last[topic]}): "
                    f"{[(m['type'], m['seq']) for m in frames]}"
                )
                assert [m["seq"] for m in frames if m["type"] == "snapshot"] == [0]
                assert check_sequence(frames) == feed.last[topic]
        moved = cluster.index_of(gateways[0].broker.nc.connected_url)
        assert moved != victim and gateways[0].broker.reconnects >= 1
    finally:
        feed.running = False
        if publishing is not None and not publishing.done():
            publishing.cancel()
        for client in clients:
            await client.close()
        for gateway in gateways:
            await gateway.stop()
        await nc.close()


async def test_run_cluster_serves_the_simulation(capsys):
    stop = asyncio.Event()
    running = asyncio.create_task(
        run_cluster(
            ClusterSettings(
                port=0,
                gateways=2,
                matches=2,
                minute_seconds=0.05,
                nats_server_bin=os.environ.get("NATS_SERVER_BIN"),
            ),
            stop=stop,
        )
    )
    try:
        printed = await _printed(capsys, running)
        nats_urls = [line.split()[1] for line in printed if line.startswith("NATS:")]
        ws_urls = [line.split()[1] for line in printed if line.startswith("WebSocket:")]
        assert len(nats_urls) == 3 and len(ws_urls) == 2, printed
        for url in ws_urls:  # every gateway serves the simulated matches
            client = await Recorder.open(url)
            await client.send({"type": "subscribe", "id": 1, "topics": ["match.1000"]})
            await client.wait_for(lambda m: m.get("topic") == "match.1000" and m["seq"] > 0)
            await client.close()
        # under authorization (PROTOCOL.md section 9): nobody anonymous
        for url in nats_urls:
            with pytest.raises((nats.errors.Error, OSError)):
                anonymous = await nats.connect(
                    url, allow_reconnect=False, max_reconnect_attempts=0, connect_timeout=2
                )
                await anonymous.close()
        [publish] = [line.split() for line in printed if line.startswith("Publish:")]
        password = publish[publish.index("--nats-password") + 1]
        auth = NatsAuth(user="publisher", password=password)
        publisher = await nats.connect(nats_urls[0], allow_reconnect=False, **auth.options())
        try:  # the publisher's credentials work, for ingest and replay
            info = await publisher.jetstream(timeout=5).stream_info(STREAM_NAME)
            assert info.config.num_replicas == 3 and info.state.messages > 0
        finally:
            await publisher.close()
    finally:
        stop.set()
        await asyncio.wait_for(running, 30)


async def _printed(capsys, running: asyncio.Task) -> list[str]:
    """run_cluster's lines, once it has printed its last one."""
    seen = ""
    deadline = time.monotonic() + 30
    while "Stream:" not in seen:
        if running.done():
            running.result()
            raise AssertionError(f"run_cluster ended early; printed {seen!r}")
        assert time.monotonic() < deadline, f"run_cluster printed no URLs: {seen!r}"
        await asyncio.sleep(0.1)
        seen += capsys.readouterr().out
    return seen.splitlines()
