"""The feed format (pure) and POST /v1/events against a real nats-server."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import nats
import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer

from scorecast.natsserver import free_port
from scorecast.publishers.errors import InvalidFeed
from scorecast.publishers.feed import Unreadable, check_batch, check_item, split_batch
from scorecast.publishers.ingest import make_app, run_ingest
from scorecast.publishers.settings import IngestSettings, PublisherSettings
from scorecast.publishers.stream import TopicPublisher, ensure_stream
from tests.test_publishers_stream import assert_topic_log, stored_messages

GOAL = {"topic": "match.1", "kind": "goal", "data": {"home": {"score": 1}}}
CLOCK = {"topic": "match.1", "kind": "clock", "data": {"minute": 12}}
OTHER = {"topic": "match.2", "kind": "kickoff", "data": {"minute": 0}}
JSON_TYPE = {"Content-Type": "application/json"}


# --- the feed format, no event loop ---------------------------------------------------


def test_split_batch_reads_an_object_an_array_and_ndjson():
    assert split_batch(orjson.dumps(GOAL)) == [GOAL]
    assert split_batch(orjson.dumps([GOAL, CLOCK])) == [GOAL, CLOCK]
    ndjson = b"\n".join(orjson.dumps(item) for item in (GOAL, CLOCK)) + b"\n\n"
    assert split_batch(ndjson) == [GOAL, CLOCK]
    assert split_batch(b"  \n") == []
    broken = split_batch(orjson.dumps(GOAL) + b"\n{oops\n")
    assert broken[0] == GOAL
    assert isinstance(broken[1], Unreadable)


@pytest.mark.parametrize(
    ("item", "error"),
    [
        ([], "JSON object"),
        ({**GOAL, "topic": "match.*"}, "invalid topic"),
        ({**GOAL, "topic": 7}, "invalid topic"),
        ({**GOAL, "kind": ""}, "'kind'"),
        ({**GOAL, "kind": "k" * 65}, "'kind'"),
        ({**GOAL, "data": [1]}, "'data'"),
        ({"topic": "match.1", "kind": "goal"}, "'data'"),
        ({**GOAL, "id": 17}, "'id'"),
        ({**GOAL, "id": ""}, "'id'"),
        ({**GOAL, "id": "bad\nid"}, "'id'"),
        ({**GOAL, "id": "x" * 257}, "'id'"),
    ],
)
def test_check_item_refuses(item, error):
    with pytest.raises(ValueError, match=error):
        check_item(item)


def test_check_item_accepts_and_ignores_unknown_fields():
    event = check_item({**GOAL, "id": "feed 1", "extra": True, "at": "ignored unless paced"})
    assert (event.topic, event.kind, event.data, event.id) == (
        "match.1",
        "goal",
        {"home": {"score": 1}},
        "feed 1",
    )
    assert check_item({**GOAL, "at": 3}, paced=True).at == 3.0
    with pytest.raises(ValueError, match="'ts'"):
        check_item({**GOAL, "ts": True}, paced=True)


def test_check_batch_reports_every_bad_item():
    with pytest.raises(InvalidFeed) as caught:
        check_batch([GOAL, {**GOAL, "topic": ""}, CLOCK, {**GOAL, "data": None}])
    assert [index for index, _ in caught.value.problems] == [1, 3]


# --- the endpoint ---------------------------------------------------------------------


@pytest.fixture
async def js(nc):
    js = nc.jetstream()
    await ensure_stream(js)
    return js


@pytest.fixture
async def client(nc, js):
    app = make_app(TopicPublisher(nc), max_body=4096, max_batch=5)
    async with TestClient(TestServer(app)) as client:
        yield client


async def post(client, body, content_type: str = "application/json"):
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    response = await client.post("/v1/events", data=data, headers={"Content-Type": content_type})
    return response.status, await response.json()


async def test_a_single_event_is_accepted(client, js):
    assert await post(client, GOAL) == (
        202,
        {"accepted": [{"topic": "match.1", "seq": 1, "duplicate": False}]},
    )
    [stored] = await stored_messages(js)
    assert (stored["kind"], stored["data"], stored["state"]) == ("goal", GOAL["data"], GOAL["data"])


async def test_an_array_is_published_in_order(client, js):
    status, body = await post(client, [GOAL, OTHER, CLOCK])
    assert status == 202
    assert body["accepted"] == [
        {"topic": "match.1", "seq": 1, "duplicate": False},
        {"topic": "match.2", "seq": 1, "duplicate": False},
        {"topic": "match.1", "seq": 2, "duplicate": False},
    ]
    match_1 = await stored_messages(js, "match.1")
    assert_topic_log(match_1)
    assert match_1[-1]["state"] == {"home": {"score": 1}, "minute": 12}


async def test_ndjson_is_accepted(client, js):
    ndjson = b"\n".join(orjson.dumps(item) for item in (OTHER, CLOCK, GOAL)) + b"\n"
    status, body = await post(client, ndjson, "application/x-ndjson")
    assert status == 202
    assert [(a["topic"], a["seq"]) for a in body["accepted"]] == [
        ("match.2", 1),
        ("match.1", 1),
        ("match.1", 2),
    ]
    assert len(await stored_messages(js)) == 3


async def test_an_invalid_batch_is_refused_whole(client, js):
    batch = [GOAL, {**CLOCK, "topic": "no spaces allowed"}, OTHER, {**GOAL, "data": "1-0"}]
    status, body = await post(client, batch)
    assert status == 400
    assert [error["index"] for error in body["errors"]] == [1, 3]
    assert "topic" in body["errors"][0]["error"]
    assert "'data'" in body["errors"][1]["error"]
    assert await stored_messages(js) == []


async def test_an_unreadable_ndjson_line_is_refused_with_its_index(client, js):
    status, body = await post(client, orjson.dumps(GOAL) + b"\n{not json\n", "application/x-ndjson")
    assert status == 400
    assert body["errors"][0]["index"] == 1
    assert await stored_messages(js) == []


@pytest.mark.parametrize("body", [b"", b"[]", b"   \n"])
async def test_an_empty_batch_is_refused(client, body):
    status, answer = await post(client, body)
    assert (status, answer["errors"][0]["index"]) == (400, None)


async def test_the_same_batch_with_ids_is_stored_once(client, js):
    batch = [{**GOAL, "id": "feed-1"}, {**CLOCK, "id": "feed-2"}, {**OTHER, "id": "feed-3"}]
    first = await post(client, batch)
    again = await post(client, batch)
    assert first[0] == again[0] == 202
    assert [a["duplicate"] for a in first[1]["accepted"]] == [False, False, False]
    assert [a["duplicate"] for a in again[1]["accepted"]] == [True, True, True]
    assert [a["seq"] for a in again[1]["accepted"]] == [a["seq"] for a in first[1]["accepted"]]
    assert len(await stored_messages(js)) == 3


async def test_a_partly_stored_batch_posted_again_stores_only_the_rest(client, js):
    await post(client, [{**GOAL, "id": "feed-1"}])
    status, body = await post(client, [{**GOAL, "id": "feed-1"}, {**CLOCK, "id": "feed-2"}])
    assert status == 202
    assert [(a["seq"], a["duplicate"]) for a in body["accepted"]] == [(1, True), (2, False)]
    assert_topic_log(await stored_messages(js))


async def test_an_oversize_body_is_refused(client, js):
    big = {**GOAL, "data": {"note": "x" * 5000}}
    status, body = await post(client, big)
    assert status == 413
    assert "4096" in body["errors"][0]["error"]
    assert await stored_messages(js) == []


async def test_a_batch_over_the_length_limit_is_refused(client, js):
    status, body = await post(client, [CLOCK] * 6)
    assert status == 413
    assert "5 events" in body["errors"][0]["error"]
    assert await stored_messages(js) == []


async def test_health(client):
    assert (await client.get("/healthz")).status == 200
    assert (await client.get("/readyz")).status == 200


async def test_without_nats_the_batch_is_refused_with_503_and_a_retry_stores_once(nats_server):
    nc = await nats.connect(nats_server.url, reconnect_time_wait=0.05, max_reconnect_attempts=-1)
    try:
        await ensure_stream(nc.jetstream())
        app = make_app(TopicPublisher(nc))
        async with TestClient(TestServer(app)) as client:
            batch = [{**GOAL, "id": "feed-1"}, {**CLOCK, "id": "feed-2"}]
            assert (await post(client, batch[:1]))[0] == 202

            nats_server.stop()
            await _until(lambda: not nc.is_connected)
            response = await client.post("/v1/events", data=orjson.dumps(batch), headers=JSON_TYPE)
            body = await response.json()
            assert response.status == 503
            assert response.headers["Retry-After"] == "1"
            assert body["accepted"] == []
            assert body["errors"][0]["index"] == 0
            assert "NATS" in body["errors"][0]["error"]
            assert (await client.get("/readyz")).status == 503
            assert (await client.get("/healthz")).status == 200

            nats_server.start()
            await _until(lambda: nc.is_connected)
            status, body = await post(client, batch)
            assert status == 202
            assert [(a["seq"], a["duplicate"]) for a in body["accepted"]] == [(1, True), (2, False)]
        assert_topic_log(await stored_messages(nc.jetstream()))
    finally:
        await nc.close()


async def _until(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def test_run_ingest_serves_until_stopped(nats_server, nc):
    port = free_port()
    stop = asyncio.Event()
    server = asyncio.create_task(
        run_ingest(
            PublisherSettings(nats=(nats_server.url,), stream_history=50),
            IngestSettings(host="127.0.0.1", port=port, max_body=1 << 20, max_batch=1000),
            stop=stop,
        )
    )
    url = f"http://127.0.0.1:{port}"
    async with aiohttp.ClientSession() as session:
        for _ in range(500):  # ingest listens at once; ready once NATS answered
            try:
                async with session.get(f"{url}/readyz") as response:
                    if response.status == 200:
                        break
            except aiohttp.ClientConnectionError:
                pass
            await asyncio.sleep(0.02)
        body = orjson.dumps([GOAL, CLOCK])
        async with session.post(f"{url}/v1/events", data=body, headers=JSON_TYPE) as response:
            assert response.status == 202
    stop.set()
    await asyncio.wait_for(server, timeout=5)
    js = nc.jetstream()
    assert (await js.stream_info("SCORES")).config.max_msgs_per_subject == 50
    assert [e["seq"] for e in await stored_messages(js)] == [1, 2]


async def test_an_event_too_large_for_nats_with_its_state_is_refused(nc, js):
    app = make_app(TopicPublisher(nc))
    async with TestClient(TestServer(app)) as client:
        big = {**GOAL, "data": {"note": "x" * 600_000}}  # patch + state: over 1 MB
        status, body = await post(client, [CLOCK, big])
    assert status == 413
    assert body["accepted"] == []  # checked before anything was stored
    assert body["errors"][0]["index"] == 1
    assert await stored_messages(js) == []
