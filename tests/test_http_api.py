"""``GET /v1/topics/<topic>`` and ``/events?since=n`` on real gateways and a
real nats-server: ETag/304, Cache-Control, request coalescing."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import jwt
from prometheus_client.parser import text_string_to_metric_families

from tests.support import RawPublisher, Recorder, ws_url

SECRET = "s3cret-s3cret-s3cret-s3cret-s3cret"


async def get(port: int, path: str, headers: dict | None = None) -> tuple[int, dict, object]:
    url = f"http://127.0.0.1:{port}{path}"
    async with aiohttp.ClientSession() as session, session.get(url, headers=headers) as answer:
        body = await answer.read()
        kind = answer.headers.get("Content-Type", "")
        data = await answer.json() if kind.startswith("application/json") else body
        return answer.status, answer.headers.copy(), data


async def test_snapshot_of_a_cold_topic_with_etag_304_and_cache_control(gateway, js):
    publisher = RawPublisher(js)
    for n in range(3):
        await publisher.publish("match.1", {"home": n})
    status, headers, body = await get(gateway.port, "/v1/topics/match.1")
    assert status == 200
    assert body["topic"] == "match.1" and body["seq"] == 3 and body["state"] == {"home": 2}
    assert body["subscribers"] == 0 and isinstance(body["ts"], float)
    assert headers["ETag"] == '"3"'
    assert headers["Cache-Control"] == "public, max-age=1"
    status, headers, _ = await get(gateway.port, "/v1/topics/match.1", {"If-None-Match": '"3"'})
    assert status == 304 and headers["ETag"] == '"3"'
    status, _, body = await get(gateway.port, "/v1/topics/match.1", {"If-None-Match": '"2"'})
    assert status == 200
    status, headers, body = await get(gateway.port, "/v1/topics/match.none")
    assert status == 200 and body == {
        "topic": "match.none", "seq": 0, "ts": None, "state": None, "subscribers": 0
    }  # fmt: skip
    assert headers["ETag"] == '"0"'


async def test_held_topic_is_answered_from_memory_with_subscribers(gateway, js):
    publisher = RawPublisher(js)
    await publisher.publish("match.2", {"a": 1})
    client = await Recorder.open(ws_url(gateway))
    await client.send({"type": "subscribe", "id": 1, "topics": ["match.2"]})
    await client.wait_for(lambda m: m["type"] == "snapshot")
    await publisher.publish("match.2", {"a": 2})
    await client.wait_for(lambda m: m.get("seq") == 2)
    reads = gateway.topics_api.jetstream_reads
    status, _, body = await get(gateway.port, "/v1/topics/match.2")
    assert status == 200 and body["seq"] == 2 and body["subscribers"] == 1
    assert gateway.topics_api.jetstream_reads == reads
    await client.close()


async def test_invalid_topic_and_tokens(make_gateway, js):
    gw = await make_gateway(jwt_secret=SECRET, http_max_age=5)
    status, _, body = await get(gw.port, "/v1/topics/bad..topic")
    assert status in (400, 401)
    assert (await get(gw.port, "/v1/topics/match.1"))[0] == 401
    allowed = jwt.encode(
        {"exp": int(time.time()) + 60, "topics": ["match.1"]}, SECRET, algorithm="HS256"
    )
    auth = {"Authorization": f"Bearer {allowed}"}
    status, headers, body = await get(gw.port, "/v1/topics/match.1", auth)
    assert status == 200 and headers["Cache-Control"] == "private, max-age=5"
    status, _, body = await get(gw.port, "/v1/topics/match.2", auth)
    assert status == 403 and b"not allowed" in body
    status, _, body = await get(gw.port, "/v1/topics/bad..topic", auth)
    assert status == 400 and b"invalid topic" in body
    status, _, body = await get(gw.port, f"/v1/topics/match.1?token={allowed}")
    assert status == 200


async def test_events_since_replays_or_answers_a_snapshot(make_gateway, js):
    gw = await make_gateway(replay_buffer=4)
    publisher = RawPublisher(js)
    for n in range(10):
        await publisher.publish("match.3", {"n": n})
    # cold topic: one JetStream read of the missed events
    status, _, body = await get(gw.port, "/v1/topics/match.3/events?since=6")
    assert status == 200 and body["topic"] == "match.3"
    assert [(e["type"], e["seq"], e["data"]) for e in body["events"]] == [
        ("event", 7, {"n": 6}), ("event", 8, {"n": 7}), ("event", 9, {"n": 8}),
        ("event", 10, {"n": 9}),
    ]  # fmt: skip
    status, _, body = await get(gw.port, "/v1/topics/match.3/events?since=10")
    assert body == {"topic": "match.3", "events": []}
    status, _, body = await get(gw.port, "/v1/topics/match.3/events?since=50")
    assert body["snapshot"]["type"] == "snapshot" and body["snapshot"]["seq"] == 10
    # held topic: from memory while it covers the gap, JetStream beyond it
    client = await Recorder.open(ws_url(gw))
    await client.send({"type": "subscribe", "id": 1, "topics": ["match.3"]})
    await client.wait_for(lambda m: m["type"] == "snapshot")
    for n in range(10, 16):
        await publisher.publish("match.3", {"n": n})
    await client.wait_for(lambda m: m.get("seq") == 16)
    status, _, body = await get(gw.port, "/v1/topics/match.3/events?since=13")
    assert [e["seq"] for e in body["events"]] == [14, 15, 16]
    status, _, body = await get(gw.port, "/v1/topics/match.3/events?since=2")
    assert [e["seq"] for e in body["events"]] == list(range(3, 17))
    status, _, body = await get(gw.port, "/v1/topics/match.3/events?since=-1")
    assert status == 400
    await client.close()


async def test_500_concurrent_requests_for_a_cold_topic_make_one_jetstream_read(make_gateway, js):
    gateway = await make_gateway(http_max_age=10)  # all 500 within the kept time
    publisher = RawPublisher(js)
    for n in range(5):
        await publisher.publish("match.cold", {"n": n})
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one():
            url = f"http://127.0.0.1:{gateway.port}/v1/topics/match.cold"
            async with session.get(url) as answer:
                return answer.status, await answer.json()

        answers = await asyncio.gather(*(one() for _ in range(500)))
    assert all(status == 200 and body["seq"] == 5 for status, body in answers)
    assert gateway.topics_api.jetstream_reads == 1
    _, _, text = await get(gateway.port, "/metrics")
    metrics = {
        sample.name: sample.value
        for family in text_string_to_metric_families(text.decode())
        for sample in family.samples
    }
    assert metrics["scorecast_http_jetstream_reads_total"] == 1
    assert metrics["scorecast_http_requests_total"] == 500


async def test_cors_preflight(make_gateway, js):
    gw = await make_gateway(allowed_origins=("https://scores.example",))
    asked = {"Origin": "https://scores.example", "Access-Control-Request-Method": "GET",
             "Access-Control-Request-Headers": "authorization"}  # fmt: skip
    async with aiohttp.ClientSession() as session:
        url = f"http://127.0.0.1:{gw.port}/v1/topics/match.1"
        async with session.options(url, headers=asked) as answer:
            assert answer.status == 204
            assert answer.headers["Access-Control-Allow-Origin"] == "https://scores.example"
            assert "Authorization" in answer.headers["Access-Control-Allow-Headers"]
        evil = {**asked, "Origin": "https://evil.example"}
        async with session.options(url, headers=evil) as answer:
            assert answer.status == 403
    status, _, _ = await get(gw.port, "/v1/topics/match.1")  # no Origin: a CDN
    assert status == 200
    status, _, _ = await get(gw.port, "/v1/topics/match.1", {"Origin": "https://evil.example"})
    assert status == 403
