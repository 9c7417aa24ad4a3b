"""The world's faults (issue 12, issue 14's phantom events), each on real
nats-server processes and real sockets: a reset stream, a poisoned head, a
stream without the republish rule, a frozen NATS, a slow reader closed 4008,
closed connections freed, nats-py callbacks that must not block."""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import socket
import time

import nats
import orjson
import pytest
from nats.js.errors import APIError
from websockets.server import ServerProtocol

from scorecast.gateway.broker_nats import NatsBroker
from scorecast.gateway.connection import Client
from scorecast.protocol import STREAM_NAME
from scorecast.protocol.envelope import encode_envelope, message_id
from scorecast.protocol.topics import subject_for
from tests.support import RawClient, RawPublisher, Recorder, check_sequence, create_stream, ws_url
from tests.test_gateway_recovery import view_state


async def subscribed(gw, topics, since=None) -> Recorder:
    client = await Recorder.open(ws_url(gw))
    request = {"type": "subscribe", "id": 1, "topics": topics}
    if since is not None:
        request["since"] = since
    await client.send(request)
    await client.wait_for(lambda m: m["type"] == "subscribed")
    return client


async def http_get(port: int, path: str) -> tuple[int, str]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    answer = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split()[1]), body.decode()


async def until(predicate, timeout: float = 20.0, step: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while not await predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(step)


# --- finding 1, broker side: a stream reset is noticed ------------------------


async def test_a_recreated_stream_is_reported_as_a_reset(nats_server, js):
    resets: list[float] = []
    broker = NatsBroker(
        [nats_server.url], lambda *_: None, on_stream_reset=lambda: resets.append(1)
    )
    await broker.connect()
    publisher = RawPublisher(js)
    for _ in range(3):
        await publisher.publish("match.r", {"n": 1})
    await js.delete_stream(STREAM_NAME)
    await create_stream(js)  # an operator's mistake, or a restore from backup
    await RawPublisher(js).publish("match.r", {"n": 1})

    async def noticed():
        return bool(resets)

    await until(noticed)
    assert broker.stream_resets == 1 and broker.stats.stream_resets == 1
    await asyncio.sleep(2.5)  # the next check sees the same stream: no second report
    assert len(resets) == 1
    await broker.close()


# --- nats-py's callbacks only schedule work ------------------------------------


async def test_reconnect_and_slow_consumer_callbacks_do_not_await_the_resync(nats_server):
    started, release = asyncio.Event(), asyncio.Event()

    async def resync(_topic):
        started.set()
        await release.wait()  # a re-sync that talks to NATS for a while

    broker = NatsBroker([nats_server.url], lambda *_: None, on_resync=resync)
    await broker.connect()
    await asyncio.wait_for(broker._reconnected(), 1)  # returns at once
    await asyncio.wait_for(started.wait(), 5)  # and the re-sync runs as its own task
    slow = nats.errors.SlowConsumerError(subject="committed.scores.m", reply="", sid=1, sub=None)
    await asyncio.wait_for(broker._error(slow), 1)
    release.set()
    await broker.close()


# --- finding 2: a poisoned head ------------------------------------------------


async def test_an_invalid_newest_message_is_skipped_not_served_as_no_data(gateway, js, nc):
    publisher = RawPublisher(js)
    for n in range(1, 4):
        await publisher.publish("match.p", {"n": n})
    poison = orjson.dumps({"topic": "match.p", "seq": 4, "ts": "yesterday", "kind": "goal"})
    await nc.publish(subject_for("match.p"), poison)  # stored: the stream takes scores.>
    await nc.flush()
    fresh = await subscribed(gateway, ["match.p"])
    snapshot = await fresh.wait_for(lambda m: m["type"] == "snapshot")
    assert (snapshot["seq"], snapshot["state"]) == (3, {"n": 3})
    assert gateway.node.stats.invalid_envelopes >= 1
    behind = await subscribed(gateway, ["match.p"], since={"match.p": 1})
    level = await subscribed(gateway, ["match.p"], since={"match.p": 3})
    await behind.wait_for(lambda m: m.get("seq") == 3)
    await publisher.publish("match.p", {"n": 4})
    for client in (fresh, behind, level):
        await client.wait_for(lambda m: m.get("seq") == 4)
    assert [(m["type"], m["seq"]) for m in behind.of("match.p")] == [("event", 2), ("event", 3),
                                                                     ("event", 4)]  # fmt: skip
    assert [(m["type"], m["seq"]) for m in level.of("match.p")] == [("event", 4)]
    assert view_state(fresh.of("match.p")) == {"n": 4}
    await asyncio.gather(*(c.close() for c in (fresh, behind, level)))


async def test_a_resync_after_a_reconnect_skips_an_invalid_head(gateway, js, nc):
    publisher = RawPublisher(js)
    await publisher.publish("match.q", {"n": 1})
    client = await subscribed(gateway, ["match.q"], since={"match.q": 0})
    await client.wait_for(lambda m: m.get("seq") == 1)
    stats = gateway.node.stats
    before = stats.invalid_envelopes
    await nc.publish(subject_for("match.q"), b"not json at all")
    await nc.flush()
    # the bad message is seen live, then skipped by the re-sync's read

    async def skipped(count: int) -> bool:
        return stats.invalid_envelopes >= before + count

    await until(lambda: skipped(1))
    gateway.node.resync(None)  # what a reconnect runs; it schedules the reads
    await until(lambda: skipped(2))
    await publisher.publish("match.q", {"n": 2})
    await client.wait_for(lambda m: m.get("seq") == 2)
    # the state is never wiped: no snapshot, the events in order
    assert [(m["type"], m["seq"]) for m in client.of("match.q")] == [("event", 1), ("event", 2)]
    await client.close()


# --- issue 14: no phantom events on a stream without the republish rule -------


async def test_without_republish_refused_publishes_never_reach_clients(make_gateway, nc):
    js = nc.jetstream()
    await js.add_stream(name=STREAM_NAME, subjects=["scores.>"], max_msgs_per_subject=1000)
    gw = await make_gateway()
    assert gw.broker.live_prefix == "scores."
    topic, subject = "match.phantom", subject_for("match.phantom")
    publisher = RawPublisher(js)
    await publisher.publish(topic, {"n": 1})
    client = await subscribed(gw, [topic])
    await client.wait_for(lambda m: m["type"] == "snapshot")
    # a duplicate (same Nats-Msg-Id) with another body: JetStream stores nothing
    phantom = encode_envelope(topic, 2, time.time(), "goal", {"phantom": 1}, {"n": 1, "phantom": 1})
    ack = await js.publish(subject, phantom, headers={"Nats-Msg-Id": message_id(topic, 1)})
    assert ack.duplicate
    # the loser of an expected-last-subject-sequence race
    loser = encode_envelope(topic, 2, time.time(), "goal", {"loser": 1}, {"n": 1, "loser": 1})
    with pytest.raises(APIError):
        await js.publish(subject, loser, headers={"Nats-Expected-Last-Subject-Sequence": "999"})
    for n in range(2, 5):
        await publisher.publish(topic, {"n": n})
    await client.wait_for(lambda m: m.get("seq") == 4)
    stored = orjson.loads((await js.get_last_msg(STREAM_NAME, subject)).data)
    frames = client.of(topic)
    assert [(m["type"], m["seq"]) for m in frames] == [("snapshot", 1)] + [
        ("event", n) for n in (2, 3, 4)
    ]
    assert [m["data"] for m in frames[1:]] == [{"n": n} for n in (2, 3, 4)]
    assert view_state(frames) == stored["state"] == {"n": 4}
    await client.close()


# --- finding 6: a frozen NATS is noticed --------------------------------------


async def test_a_frozen_nats_makes_readyz_503_and_held_topics_resync(gateway, js, nats_server):
    publisher = RawPublisher(js)
    await publisher.publish("match.f", {"n": 1})
    client = await subscribed(gateway, ["match.f"])
    await client.wait_for(lambda m: m["type"] == "snapshot")
    assert (await http_get(gateway.port, "/readyz"))[0] == 200
    pid = nats_server.process.pid
    os.kill(pid, signal.SIGSTOP)
    try:

        async def unready():
            return (await http_get(gateway.port, "/readyz"))[0] == 503

        await until(unready, timeout=20)  # nats-py's default pings would take minutes
        status, body = await http_get(gateway.port, "/readyz")
        assert status == 503 and "NATS" in body
    finally:
        os.kill(pid, signal.SIGCONT)

    async def ready():
        return (await http_get(gateway.port, "/readyz"))[0] == 200

    await until(ready, timeout=30)
    assert gateway.broker.reconnects >= 1
    await publisher.publish("match.f", {"n": 2})
    await client.wait_for(lambda m: m.get("seq") == 2, timeout=20)
    assert check_sequence(client.of("match.f")) == 2
    await client.close()


# --- finding 4: a slow reader sees 4008, not megabytes of stale frames --------


async def test_a_slow_close_drops_the_backlog_so_the_client_reads_4008(make_gateway, js):
    hard = 1024 * 1024
    gw = await make_gateway(soft_limit=64 * 1024 * 1024, hard_limit=hard, slow_grace=60)
    publisher = RawPublisher(js)
    await publisher.publish("match.s", {"n": 0})
    slow = await RawClient.open(gw.port)
    await slow.send({"type": "subscribe", "id": 1, "topics": ["match.s"]})
    await slow.read_until(lambda m: m["type"] == "snapshot")
    pad = "x" * 8000
    for n in range(1, 601):  # 4.8 MB; the slow client reads nothing meanwhile
        await publisher.publish("match.s", {"n": n, "pad": pad})
        if gw.node.stats.slow_closes:
            break
    await until(lambda: _true(gw.node.stats.slow_closes == 1))
    end = await slow.read_until(lambda m: False, timeout=30)  # now it reads, fast
    assert end is None and slow.close_code == 4008
    stale = sum(len(orjson.dumps(m)) for m in slow.of("match.s"))
    # before: everything unsent (past the 1 MB hard limit) came first, then 1006
    assert stale < hard // 2, f"{stale} bytes of stale frames before the close"
    assert gw.node.stats.slow_bytes_dropped > 0
    slow.close()


async def _true(value: bool) -> bool:
    return value


async def test_each_client_socket_has_a_bounded_send_buffer(make_gateway):
    gw = await make_gateway(socket_send_buffer=32 * 1024)
    client = await Recorder.open(ws_url(gw))
    await client.wait_for(lambda m: m["type"] == "welcome")
    (connection,) = gw.connections
    sock = connection.transport.get_extra_info("socket")
    assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) <= 2 * 32 * 1024
    await client.close()


# --- finding 5: closed connections are freed without the cyclic collector -----


async def test_closed_connections_leave_no_garbage_for_the_collector(gateway):
    def alive() -> int:
        return sum(1 for o in gc.get_objects() if type(o) in (Client, ServerProtocol))

    gc.collect()
    gc.disable()  # as good as the gateway's raised thresholds, for a while
    try:
        before = alive()
        for _ in range(30):
            client = await subscribed(gateway, ["match.churn"])
            await client.close()
        await until(lambda: _true(not gateway.connections), timeout=10)
        assert alive() - before <= 1, "closed connections wait for the cyclic collector"
    finally:
        gc.enable()
