"""The Python client end to end: a real nats-server, real make_gateway restarted
and drained on a fixed port, and a client whose view must match the stream."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import signal
import subprocess
import time

import jwt
import orjson
import pytest

from scorecast.client import Backoff, ClientFailed, ScorecastClient, Status, run_watch
from scorecast.natsserver import free_port
from scorecast.protocol import STREAM_NAME
from scorecast.protocol.topics import subject_for
from tests.support import RawPublisher, start_gateway

FAST = Backoff(min_delay=0.05, max_delay=0.5)
SECRET = "client-test-secret-long-enough-for-hs256"


@pytest.fixture
def gateway_settings(gateway_settings):
    """A fixed port, so a restarted gateway is found where the old one was."""
    return dataclasses.replace(gateway_settings, port=free_port(), drain_window=0.2)


@pytest.fixture
def settings(gateway_settings):
    return gateway_settings


def url(settings) -> str:
    return f"ws://127.0.0.1:{settings.port}/ws"


async def stored(js, topic: str) -> tuple[int, dict]:
    """The stream's newest envelope of ``topic``: its (seq, state)."""
    message = await js.get_last_msg(STREAM_NAME, subject_for(topic))
    envelope = orjson.loads(message.data)
    return envelope["seq"], envelope["state"]


def assert_contiguous(updates, topic: str) -> None:
    """One snapshot first, then every event exactly once and in order."""
    seqs = [(u.seq, u.snapshot) for u in updates if u.topic == topic]
    assert seqs[0][1], f"{topic} did not start with a snapshot: {seqs[:3]}"
    for (before, _), (after, snapshot) in itertools.pairwise(seqs):
        assert not snapshot and after == before + 1, f"{topic}: {before} then {after}"


async def goals(publisher: RawPublisher, topic: str, count: int) -> None:
    for _ in range(count):
        seq = publisher.seqs.get(topic, 0) + 1
        await publisher.publish(topic, {"score": f"{seq}-0", "minute": seq}, kind="goal")


async def test_view_survives_a_gateway_restart_without_a_gap(js, settings, make_gateway):
    publisher = RawPublisher(js)
    await goals(publisher, "match.1", 5)
    gw = await make_gateway()
    seen = []
    client = ScorecastClient(url(settings), topics=["match.1", "match.2"], backoff=FAST)
    iterated = []

    async def consume():
        async for update in client.updates():
            iterated.append(update)

    async with client:
        consumer = asyncio.create_task(consume())
        client.on_update = seen.append
        await client.wait_for("match.1", lambda view: view.seq == 5)
        await goals(publisher, "match.1", 5)
        await goals(publisher, "match.2", 3)
        await client.wait_for("match.1", lambda view: view.seq == 10)

        await gw.stop()
        await goals(publisher, "match.1", 10)  # while no gateway runs
        await goals(publisher, "match.2", 2)
        await make_gateway()
        await goals(publisher, "match.1", 5)
        await goals(publisher, "match.2", 1)

        for topic in ("match.1", "match.2"):
            seq, state = await stored(js, topic)
            view = await client.wait_for(topic, lambda view, seq=seq: view.seq == seq)
            assert view.state == state
        assert client.reconnects >= 1 and client.status is Status.CONNECTED
    await asyncio.wait_for(consumer, 5)  # the iterator ends when the client closes

    assert client.view("match.1").seq == 25 and client.view("match.2").seq == 6
    assert client.state.counters.gaps == 0 and client.state.counters.duplicates == 0
    assert_contiguous(seen, "match.1")
    assert_contiguous(seen, "match.2")
    assert [(u.topic, u.seq) for u in iterated] == [(u.topic, u.seq) for u in seen]


async def test_drain_hint_and_retry_after_are_honoured(js, settings, make_gateway):
    publisher = RawPublisher(js)
    await goals(publisher, "match.7", 2)
    old = await make_gateway()
    statuses = []
    async with ScorecastClient(
        url(settings), topics=["match.7"], backoff=FAST, on_status=statuses.append
    ) as client:
        await client.wait_for("match.7", lambda view: view.seq == 2)
        drain = asyncio.create_task(old.drain())
        # the hint comes within the drain window; the client's comeback meets a
        # draining gateway that answers 503 with Retry-After
        deadline = time.monotonic() + 10
        while client.last_refusal is None and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        refused_at = time.monotonic()
        assert client.last_refusal is not None, statuses
        status, wait = client.last_refusal
        assert status == 503 and wait is not None and wait > 0
        await drain
        await old.stop()
        await goals(publisher, "match.7", 3)
        await make_gateway()
        await client.wait_for("match.7", lambda view: view.seq == 5, timeout=wait + 10)
        assert time.monotonic() - refused_at >= wait - 0.1
    assert Status.DRAINING in statuses
    assert statuses[statuses.index(Status.DRAINING) :][-2:] == [Status.CONNECTED, Status.CLOSED]
    assert client.state.counters.gaps == 0


async def test_subscribe_and_unsubscribe_while_connected(js, gateway):
    publisher = RawPublisher(js)
    await goals(publisher, "match.1", 1)
    await goals(publisher, "match.2", 1)
    async with ScorecastClient(f"ws://127.0.0.1:{gateway.port}/ws", backoff=FAST) as client:
        await client.subscribe("match.1")
        await client.wait_for("match.1", lambda view: view.seq == 1)
        await client.subscribe("match.2")
        await client.unsubscribe("match.1")
        await client.wait_for("match.2", lambda view: view.seq == 1)
        assert client.topics == ["match.2"] and client.get("match.1") is None
        await goals(publisher, "match.2", 1)
        view = await client.wait_for("match.2", lambda view: view.seq == 2)
        assert view.state == {"score": "2-0", "minute": 2}


async def test_refused_static_token_stops_the_client(js, settings, make_gateway):
    gw = await make_gateway(jwt_secret=SECRET)
    client = ScorecastClient(f"ws://127.0.0.1:{gw.port}/ws", token="not-a-jwt", backoff=FAST)
    async with client:
        with pytest.raises(ClientFailed, match="HTTP 401") as failed:
            await asyncio.wait_for(client.wait_closed(), 10)
        assert failed.value.status == 401
        with pytest.raises(ClientFailed):
            async for _ in client.updates():
                pass


@pytest.mark.parametrize("in_query", [False, True])
async def test_token_from_a_callable_in_header_or_query(js, settings, make_gateway, in_query):
    gw = await make_gateway(jwt_secret=SECRET)
    await goals(RawPublisher(js), "match.3", 1)
    calls = []

    async def fresh_token() -> str:
        calls.append(time.time())
        return jwt.encode({"exp": int(time.time()) + 60}, SECRET, algorithm="HS256")

    async with ScorecastClient(
        f"ws://127.0.0.1:{gw.port}/ws",
        token=fresh_token,
        token_in_query=in_query,
        topics=["match.3"],
        backoff=FAST,
    ) as client:
        view = await client.wait_for("match.3", lambda view: view.seq == 1)
        assert view.state == {"score": "1-0", "minute": 1} and len(calls) == 1


async def test_heartbeat_pings_get_pongs(js, gateway):
    async with ScorecastClient(
        f"ws://127.0.0.1:{gateway.port}/ws", topics=["match.1"], ping_interval=0.1
    ) as client:
        await client.wait_for("match.1", lambda view: view.seq == 0)
        await asyncio.sleep(0.3)  # several pings, each answered: no reconnect
        assert client.reconnects == 0 and client.status is Status.CONNECTED


async def test_a_frozen_gateway_is_detected_by_heartbeats(nats_server, js, settings):
    """SIGSTOP: the socket stays open but nothing answers; pongs stop coming."""
    publisher = RawPublisher(js)
    await goals(publisher, "match.5", 1)
    process = await asyncio.to_thread(
        start_gateway, nats_server.url, settings.port, "--workers", "1"
    )
    try:
        async with ScorecastClient(
            url(settings),
            topics=["match.5"],
            backoff=FAST,
            ping_interval=0.2,
            ping_timeout=0.4,
            open_timeout=1.0,
        ) as client:
            await client.wait_for("match.5", lambda view: view.seq == 1)
            process.send_signal(signal.SIGSTOP)
            deadline = time.monotonic() + 10
            while client.status is Status.CONNECTED and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            assert client.status is Status.RECONNECTING
            await goals(publisher, "match.5", 2)
            process.send_signal(signal.SIGCONT)
            view = await client.wait_for("match.5", lambda view: view.seq == 3, timeout=15)
            assert view.state == {"score": "3-0", "minute": 3}
            assert client.state.counters.gaps == 0
    finally:
        process.send_signal(signal.SIGCONT)
        process.send_signal(signal.SIGINT)  # stops at once (SIGTERM would drain)
        try:
            await asyncio.to_thread(process.wait, 10)
        except subprocess.TimeoutExpired:
            process.kill()
            await asyncio.to_thread(process.wait)


async def test_http_429_retry_after_is_honoured(js, settings, make_gateway):
    gw = await make_gateway(connections_per_ip_per_second=1.0)
    await goals(RawPublisher(js), "match.4", 1)
    address = f"ws://127.0.0.1:{gw.port}/ws"
    async with ScorecastClient(address, topics=["match.4"], backoff=FAST) as first:
        await first.wait_for("match.4", lambda view: view.seq == 1)
        started = time.monotonic()
        async with ScorecastClient(address, topics=["match.4"], backoff=FAST) as second:
            await second.wait_for("match.4", lambda view: view.seq == 1)
            status, wait = second.last_refusal
            assert status == 429 and wait is not None and wait > 0
            assert time.monotonic() - started >= wait - 0.1


async def test_refused_origin_stops_the_client(js, settings, make_gateway):
    gw = await make_gateway(allowed_origins=("https://scores.example",))
    async with ScorecastClient(f"ws://127.0.0.1:{gw.port}/ws", backoff=FAST) as client:
        with pytest.raises(ClientFailed, match="HTTP 403"):
            await asyncio.wait_for(client.wait_closed(), 10)
        assert client.status is Status.CLOSED


async def test_a_consumer_that_falls_behind_loses_its_oldest_updates(js, gateway):
    publisher = RawPublisher(js)
    client = ScorecastClient(
        f"ws://127.0.0.1:{gateway.port}/ws", topics=["match.6"], backoff=FAST, max_queue=3
    )
    async with client:
        updates = client.updates()
        await client.wait_for("match.6", lambda view: view.seq == 0)
        await goals(publisher, "match.6", 6)
        await client.wait_for("match.6", lambda view: view.seq == 6)
        assert [(await anext(updates)).seq for _ in range(3)] == [4, 5, 6]
        assert client.dropped_updates == 4  # the snapshot and events 1 to 3
        assert client.get("match.6") == {"score": "6-0", "minute": 6}


async def test_watch_prints_json_lines_and_stops_by_itself(js, settings, make_gateway):
    gw = await make_gateway()
    await goals(RawPublisher(js), "match.8", 3)
    lines: list[str] = []
    address = f"ws://127.0.0.1:{gw.port}/ws"
    assert await run_watch(address, ["match.8"], count=1, out=lines.append) == 0
    first = orjson.loads(lines[0])
    assert first["kind"] == "snapshot" and first["seq"] == 3 and first["state"]["score"] == "3-0"
    assert await run_watch(address, ["match.8"], seconds=0.3, out=lines.append) == 0
    assert len(lines) == 2
    closed = await make_gateway(allowed_origins=("https://scores.example",), port=free_port())
    refused = f"ws://127.0.0.1:{closed.port}/ws"
    assert await run_watch(refused, ["match.8"], out=lines.append) == 1
    assert orjson.loads(lines[-1])["status"] == 403


def test_bad_url_is_refused_at_once():
    with pytest.raises(ValueError, match="ws://"):
        ScorecastClient("http://127.0.0.1:1/ws")


async def test_refresh_token_keeps_the_connection_past_the_first_exp(make_gateway, js):
    secret = "refresh-test-secret-long-enough-for-hs256"

    def token(seconds: float) -> str:
        return jwt.encode({"exp": int(time.time() + seconds)}, secret, algorithm="HS256")

    gw = await make_gateway(jwt_secret=secret)
    publisher = RawPublisher(js)
    await goals(publisher, "match.9", 1)
    async with ScorecastClient(url(gw.settings), token=token(2), topics=["match.9"]) as client:
        await client.wait_for("match.9", lambda view: view.seq == 1)
        with pytest.raises(ClientFailed):
            await client.refresh_token("not a token")
        exp = await client.refresh_token(token(30))
        assert exp > time.time() + 20
        await asyncio.sleep(2.5)  # past the first token's exp: no 4001
        await goals(publisher, "match.9", 1)
        await client.wait_for("match.9", lambda view: view.seq == 2)
        assert client.reconnects == 0
