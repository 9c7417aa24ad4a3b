"""``GET /sse`` on real gateways and a real nats-server (PROTOCOL.md section 3,
"Other transports on the same port"), read through a bare socket."""

from __future__ import annotations

import asyncio
import time

import jwt

from tests.support import RawPublisher, check_sequence
from tests.support_sse import SseReader

SECRET = "s3cret-s3cret-s3cret-s3cret-s3cret"


def token(**claims) -> str:
    return jwt.encode({"exp": int(time.time()) + 600, **claims}, SECRET, algorithm="HS256")


async def publish(publisher: RawPublisher, topic: str, count: int) -> int:
    seq = 0
    for _ in range(count):
        seq = await publisher.publish(topic, {"n": publisher.seqs.get(topic, 0) + 1})
    return seq


async def test_snapshot_then_events_gap_free_with_cursor_ids(gateway, js):
    publisher = RawPublisher(js)
    await publish(publisher, "match.1", 3)
    await publish(publisher, "match.2", 2)
    sse = await SseReader.open(gateway.port, "?topics=match.1,match.2")
    assert sse.status == 200
    assert sse.headers["content-type"].startswith("text/event-stream")
    await sse.wait_for(lambda f: f.get("topic") == "match.2" and f["type"] == "snapshot")
    await sse.wait_for(lambda f: f.get("topic") == "match.1" and f["type"] == "snapshot")
    await publish(publisher, "match.1", 5)
    await publish(publisher, "match.2", 1)
    await sse.wait_for(lambda f: f.get("topic") == "match.1" and f.get("seq") == 8)
    await sse.wait_for(lambda f: f.get("topic") == "match.2" and f.get("seq") == 3)
    assert sse.messages[0]["event"] == "welcome"
    assert sse.messages[0]["data"]["node"] == "test"
    for message in sse.messages:
        assert message["event"] == message["data"]["type"]
        assert message["event"] != "subscribed"
        if message["event"] in ("snapshot", "event"):  # every topic, in request order
            assert [item.split(":")[0] for item in message["id"].split(",")] == [
                "match.1",
                "match.2",
            ]
        else:
            assert message["id"] is None
    assert check_sequence(sse.of("match.1")) == 8
    assert check_sequence(sse.of("match.2")) == 3
    assert sse.last_id == "match.1:8,match.2:3"
    assert sse.retry == 1000
    await sse.close()


async def test_last_event_id_resumes_exactly_as_since(make_gateway, js):
    gw = await make_gateway()
    publisher = RawPublisher(js)
    await publish(publisher, "match.3", 4)
    first = await SseReader.open(gw.port, "?topics=match.3,match.4")
    await first.wait_for(lambda f: f.get("topic") == "match.3" and f["type"] == "snapshot")
    await first.wait_for(lambda f: f.get("topic") == "match.4" and f["type"] == "snapshot")
    assert first.last_id in ("match.3:4,match.4:0",)
    cursor = first.last_id
    await first.close()
    await publish(publisher, "match.3", 3)
    await publish(publisher, "match.4", 2)
    # the URL's since is older: Last-Event-ID (the browser's own resume) wins
    again = await SseReader.open(
        gw.port, "?topics=match.3,match.4&since=match.3:1", {"Last-Event-ID": cursor}
    )
    await again.wait_for(lambda f: f.get("topic") == "match.3" and f.get("seq") == 7)
    await again.wait_for(lambda f: f.get("topic") == "match.4" and f.get("seq") == 2)
    assert [(f["type"], f["seq"]) for f in again.of("match.3")] == [("event", s) for s in (5, 6, 7)]
    assert [(f["type"], f["seq"]) for f in again.of("match.4")] == [("event", s) for s in (1, 2)]
    assert again.last_id == "match.3:7,match.4:2"
    await again.close()


async def test_resume_on_another_gateway_reads_jetstream(make_gateway, js):
    one, two = await make_gateway(node="one"), await make_gateway(node="two")
    publisher = RawPublisher(js)
    await publish(publisher, "match.5", 3)
    sse = await SseReader.open(one.port, "?topics=match.5")
    await sse.wait_for(lambda f: f.get("seq") == 3)
    await publish(publisher, "match.5", 2)
    await sse.wait_for(lambda f: f.get("seq") == 5)
    cursor = sse.last_id
    await sse.close()
    await publish(publisher, "match.5", 4)
    other = await SseReader.open(two.port, "?topics=match.5", {"Last-Event-ID": cursor})
    await other.wait_for(lambda f: f.get("seq") == 9)
    assert other.frames[0]["node"] == "two"
    assert [(f["type"], f["seq"]) for f in other.of("match.5")] == [
        ("event", s) for s in range(6, 10)
    ]
    await publish(publisher, "match.5", 1)
    await other.wait_for(lambda f: f.get("seq") == 10)
    await other.close()


async def test_bad_topic_lists_are_400_with_a_reason(gateway, js):
    for query, words in (
        ("", b"topics"),
        ("?topics=", b"topics"),
        ("?topics=match..1", b"invalid topic"),
        ("?topics=match.1&since=match.1:x", b"bad position"),
    ):
        sse = await SseReader.open(gateway.port, query)
        assert sse.status == 400, query
        assert words in sse.body, (query, sse.body)
    bad = await SseReader.open(gateway.port, "?topics=match.1", {"Last-Event-ID": "garbage"})
    assert bad.status == 400


async def test_tokens_origins_limits_and_drain_refuse_at_the_start(make_gateway, js):
    gw = await make_gateway(
        jwt_secret=SECRET,
        allowed_origins=("https://scores.example",),
        connections_per_ip_per_second=3,
    )
    missing = await SseReader.open(gw.port, "?topics=match.1")
    assert missing.status == 403  # a cross-site request without Origin is refused like /ws
    origin = {"Origin": "https://scores.example"}
    assert (await SseReader.open(gw.port, "?topics=match.1", origin)).status == 401
    bad_origin = await SseReader.open(
        gw.port, f"?topics=match.1&token={token()}", {"Origin": "https://evil.example"}
    )
    assert bad_origin.status == 403
    await asyncio.sleep(1.1)  # the rate bucket refills
    header = {**origin, "Authorization": f"Bearer {token()}"}
    ok = await SseReader.open(gw.port, "?topics=match.1", header)
    assert ok.status == 200
    assert ok.headers["access-control-allow-origin"] == "https://scores.example"
    await ok.wait_for(lambda f: f["type"] == "snapshot")
    refused = [await SseReader.open(gw.port, "?topics=match.1", header) for _ in range(5)]
    limited = [r for r in refused if r.status == 429]
    assert limited and all(r.headers.get("retry-after") for r in limited)
    await ok.close()
    gw.node.draining = True
    draining = await SseReader.open(gw.port, "?topics=match.1", header)
    assert draining.status == 503 and draining.headers["retry-after"]
    gw.node.draining = False


async def test_same_origin_browser_request_without_origin_passes(make_gateway, js):
    gw = await make_gateway(allowed_origins=("https://scores.example",))
    same = await SseReader.open(gw.port, "?topics=match.1", {"Sec-Fetch-Site": "same-origin"})
    assert same.status == 200
    await same.close()


async def test_forbidden_topics_get_an_error_each_and_the_rest_stream(make_gateway, js):
    gw = await make_gateway(jwt_secret=SECRET)
    publisher = RawPublisher(js)
    await publish(publisher, "match.1", 2)
    allowed = token(topics=["match.1"])
    sse = await SseReader.open(gw.port, f"?topics=match.1,match.2,match.3&token={allowed}")
    assert sse.status == 200
    await sse.wait_for(lambda f: f["type"] == "snapshot" and f["seq"] == 2)
    errors = [f for f in sse.frames if f["type"] == "error"]
    assert sorted(e["message"] for e in errors) == ["not allowed: match.2", "not allowed: match.3"]
    assert all(e["code"] == "forbidden" and e["id"] is None for e in errors)
    await publish(publisher, "match.1", 1)
    await sse.wait_for(lambda f: f.get("seq") == 3)
    assert sse.last_id == "match.1:3"
    await sse.close()


async def test_heartbeat_comments(make_gateway, js):
    gw = await make_gateway(heartbeat=1.0)
    sse = await SseReader.open(gw.port, "?topics=match.1")
    await sse.wait_for(lambda f: f["type"] == "snapshot")
    await asyncio.sleep(3.5)
    assert sse.comments >= 2
    assert not sse.ended  # a client that never speaks is not closed for silence
    await sse.close()


async def test_drain_sends_reconnect_then_ends(make_gateway, js):
    gw = await make_gateway(drain_window=0.2, drain_deadline=5)
    sse = await SseReader.open(gw.port, "?topics=match.1")
    await sse.wait_for(lambda f: f["type"] == "snapshot")
    await gw.drain()
    hint = await sse.wait_for(lambda f: f["type"] == "reconnect")
    assert hint["reason"] == "draining"
    await sse.wait_end()
    assert sse.retry == max(hint["after_ms"], 1)


async def test_slow_reader_is_conflated_then_cut_while_a_fast_one_gets_everything(make_gateway, js):
    gw = await make_gateway(soft_limit=32 * 1024, hard_limit=10**9, slow_grace=2.0)
    publisher = RawPublisher(js)
    await publish(publisher, "match.9", 1)
    fast = await SseReader.open(gw.port, "?topics=match.9")
    slow = await SseReader.open(gw.port, "?topics=match.9", receive_buffer=4096, read=False)
    await fast.wait_for(lambda f: f["type"] == "snapshot")
    padding = "x" * 8000
    seq = 1
    for _ in range(600):
        seq = await publisher.publish("match.9", {"pad": padding, "n": seq})
    await fast.wait_for(lambda f: f.get("seq") == seq, timeout=60)
    assert check_sequence(fast.of("match.9")) == seq
    assert [f["type"] for f in fast.of("match.9")].count("snapshot") == 1
    deadline = time.monotonic() + 30
    while gw.node.stats.slow_closes == 0 and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    assert gw.node.stats.slow_clients >= 1
    assert gw.node.stats.slow_closes == 1
    slow.start_reading()
    await slow.wait_end()
    frames = slow.of("match.9")
    check_sequence(frames)
    assert frames[-1]["seq"] < seq  # events were skipped: conflation, then the cut
    assert slow.frames[-1]["type"] == "error" and slow.frames[-1]["code"] == "slow_consumer"
    assert not fast.ended
    await fast.close()


async def test_slow_reader_that_catches_up_gets_a_snapshot(make_gateway, js):
    gw = await make_gateway(soft_limit=32 * 1024, slow_grace=30.0)
    publisher = RawPublisher(js)
    await publish(publisher, "match.8", 1)
    slow = await SseReader.open(gw.port, "?topics=match.8", receive_buffer=4096, read=False)
    await asyncio.sleep(0.5)
    padding = "y" * 8000
    seq = 1
    for _ in range(600):
        seq = await publisher.publish("match.8", {"pad": padding, "n": seq})
    deadline = time.monotonic() + 20
    while gw.node.stats.slow_clients == 0 and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    assert gw.node.stats.slow_clients == 1
    slow.start_reading()
    final = await slow.wait_for(lambda f: f.get("seq") == seq, timeout=30)
    assert final["type"] == "snapshot"  # the conflated topic's newest snapshot
    assert check_sequence(slow.of("match.8")) == seq
    await slow.close()


async def test_an_expired_token_ends_the_stream_with_unauthorized(make_gateway, js):
    gw = await make_gateway(jwt_secret=SECRET)
    short = jwt.encode({"exp": int(time.time()) + 2}, SECRET, algorithm="HS256")
    sse = await SseReader.open(gw.port, f"?topics=match.1&token={short}")
    assert sse.status == 200
    await sse.wait_for(lambda f: f["type"] == "snapshot")
    await sse.wait_end(timeout=15)
    assert sse.frames[-1]["type"] == "error" and sse.frames[-1]["code"] == "unauthorized"
    expired = await SseReader.open(gw.port, f"?topics=match.1&token={short}")
    assert expired.status == 401 and b"expired" in expired.body
