"""POST /v1/events facing hostile feeds: tokens (PROTOCOL.md section 8),
bodies built to break the endpoint, and failures after storing began.
Real nats-server, real HTTP sockets; every refusal stores nothing."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import jwt
import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from scorecast.natsserver import free_port
from scorecast.publishers.feed_ids import FeedIds
from scorecast.publishers.ingest import feed_verifier, make_app, run_ingest
from scorecast.publishers.settings import IngestSettings, PublisherSettings
from scorecast.publishers.stream import TopicPublisher, ensure_stream
from tests.test_publishers_stream import assert_topic_log, stored_messages

SECRET = "feed-secret-of-at-least-thirty-two-bytes"
GOAL = {"topic": "match.1", "kind": "goal", "data": {"home": {"score": 1}}}
CLOCK = {"topic": "match.1", "kind": "clock", "data": {"minute": 12}}
OTHER = {"topic": "match.2", "kind": "kickoff", "data": {"minute": 0}}
JSON = {"Content-Type": "application/json"}


def token(key=SECRET, algorithm="HS256", **claims) -> str:
    claims.setdefault("exp", int(time.time()) + 3600)  # made at collection time
    claims = {name: value for name, value in claims.items() if value is not None}
    return jwt.encode(claims, key, algorithm=algorithm)


def bearer(value: str) -> dict[str, str]:
    return {**JSON, "Authorization": f"Bearer {value}"}


@pytest.fixture
async def js(nc):
    js = nc.jetstream()
    await ensure_stream(js)
    return js


@pytest.fixture
async def publisher(nc, js):
    return TopicPublisher(nc, feed_ids=await FeedIds.open(js))


@pytest.fixture
async def secured(publisher):
    app = make_app(
        publisher, max_batch=10, verifier=feed_verifier(secret=SECRET, public_key_file=None)
    )
    async with TestClient(TestServer(app)) as client:
        yield client


@pytest.fixture
async def open_client(publisher):
    app = make_app(publisher, max_body=4096, max_batch=10)
    async with TestClient(TestServer(app)) as client:
        yield client


async def post(client, body, headers=JSON):
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    response = await client.post("/v1/events", data=data, headers=headers)
    return response.status, await response.json()


# --- tokens ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        (JSON, "missing token"),
        ({**JSON, "Authorization": "Basic dXNlcjpwdw=="}, "missing token"),
        (bearer("not.a.jwt"), "invalid token"),
        (
            bearer(token(key="someone-elses-secret-also-thirty-two-bytes", publish=["match.*"])),
            "invalid token",
        ),
        (bearer(token(exp=int(time.time()) - 10, publish=["match.*"])), "token expired"),
        (bearer(jwt.encode({"publish": ["match.*"]}, SECRET)), "token has no exp"),
        (bearer(token()), "token has no publish claim"),
        (bearer(token(publish="match.*")), "publish claim must be a list"),
        (bearer(token(topics=["match.*"])), "token has no publish claim"),
    ],
)
async def test_a_missing_or_bad_token_is_refused_with_the_reason(secured, js, headers, reason):
    response = await secured.post("/v1/events", data=orjson.dumps([GOAL]), headers=headers)
    status, body = response.status, await response.json()
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert status == 401
    assert reason in body["errors"][0]["error"]
    assert await stored_messages(js) == []


async def test_an_allowed_token_publishes(secured, js):
    status, body = await post(secured, [GOAL, OTHER], bearer(token(publish=["match.*"])))
    assert status == 202
    assert [(a["topic"], a["seq"]) for a in body["accepted"]] == [("match.1", 1), ("match.2", 1)]
    assert len(await stored_messages(js)) == 2


async def test_a_partly_forbidden_batch_is_refused_whole_naming_the_items(secured, js):
    batch = [GOAL, {**OTHER, "topic": "football.live"}, CLOCK, {**OTHER, "topic": "match.2.x"}]
    status, body = await post(secured, batch, bearer(token(publish=["match.1", "match.2"])))
    assert status == 403
    assert [e["index"] for e in body["errors"]] == [1, 3]
    assert "football.live" in body["errors"][0]["error"]
    assert await stored_messages(js) == []
    # '>' matches the trailing tokens
    status, _ = await post(secured, batch, bearer(token(publish=["match.>", "football.*"])))
    assert status == 202


async def test_public_key_tokens(publisher, js, tmp_path):
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = tmp_path / "feed.pem"
    pem.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    app = make_app(publisher, verifier=feed_verifier(secret=None, public_key_file=str(pem)))
    async with TestClient(TestServer(app)) as client:
        good = token(key=key, algorithm="RS256", publish=["match.1"])
        assert (await post(client, [GOAL], bearer(good)))[0] == 202
        forged = token(key=SECRET, publish=["match.1"])  # HS256 is not accepted here
        assert (await post(client, [GOAL], bearer(forged)))[0] == 401
    assert len(await stored_messages(js)) == 1


# --- hostile bodies: nothing stored ---------------------------------------------------


def nested(depth: int) -> bytes:
    """``data`` nested ``depth`` levels, spelled by hand (encoders refuse ~255+)."""
    return b'{"x":' * depth + b"1" + b"}" * depth


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (nested(300), "nested deeper"),
        (nested(40), "nested deeper"),
        (b'{"n": 18446744073709551616}', "64-bit"),
        (b'{"n": -9223372036854775809}', "64-bit"),
        (b'{"n": 1e400}', "not JSON"),
    ],
)
async def test_hostile_data_refuses_the_batch_whole(open_client, js, data, reason):
    body = b'[%s, {"topic": "match.1", "kind": "clock", "data": %s}]' % (orjson.dumps(GOAL), data)
    status, answer = await post(open_client, body)
    assert status == 400
    assert reason in answer["errors"][0]["error"]
    assert await stored_messages(js) == []


async def test_extremely_deep_json_is_a_400_not_a_500(publisher, js):
    app = make_app(publisher)
    async with TestClient(TestServer(app)) as client:
        body = b'{"topic": "match.1", "kind": "k", "data": ' + nested(100_000) + b"}"
        status, _ = await post(client, body)
    assert status == 400
    assert await stored_messages(js) == []


async def test_integers_within_64_bits_are_kept_exactly(open_client, js):
    body = b'{"topic": "match.1", "kind": "k", "data": {"big": 18446744073709551615}}'
    assert (await post(open_client, body))[0] == 202
    [stored] = await stored_messages(js)
    assert stored["data"] == {"big": 18446744073709551615}


@pytest.mark.parametrize("content_type", ["text/plain", "multipart/form-data", "application/xml"])
async def test_a_body_that_is_not_json_by_content_type_is_415(open_client, js, content_type):
    status, answer = await post(open_client, [GOAL], {"Content-Type": content_type})
    assert status == 415
    assert content_type in answer["errors"][0]["error"]
    assert await stored_messages(js) == []


@pytest.mark.parametrize(
    "content_type",
    [
        "application/x-ndjson",
        "application/json; charset=utf-8",
        # what curl -d and urllib send when nobody chose a type
        "application/x-www-form-urlencoded",
    ],
)
async def test_json_and_ndjson_content_types_are_taken(open_client, content_type):
    status, _ = await post(open_client, orjson.dumps(GOAL), {"Content-Type": content_type})
    assert status == 202


async def test_an_oversized_chunked_body_is_413_and_stores_nothing(open_client, js):
    async def chunks():
        yield orjson.dumps(GOAL)[:-1]
        for _ in range(100):
            yield b' , "pad": "' + b"x" * 100 + b'"'

    response = await open_client.post("/v1/events", data=chunks(), headers=JSON)
    assert response.status == 413
    assert "4096" in (await response.json())["errors"][0]["error"]
    assert await stored_messages(js) == []


@pytest.fixture
async def served(nats_server):
    """``run_ingest`` itself (the command's code path) with 1-second timeouts."""
    port = free_port()
    stop = asyncio.Event()
    server = asyncio.create_task(
        run_ingest(
            PublisherSettings(nats=(nats_server.url,)),
            IngestSettings(port=port, max_body=4096, header_timeout=1.0, body_timeout=1.0),
            stop=stop,
        )
    )
    deadline = time.monotonic() + 20
    while True:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            break
        except OSError:
            assert time.monotonic() < deadline and not server.done(), "ingest did not start"
            await asyncio.sleep(0.05)
    yield port
    stop.set()
    await asyncio.wait_for(server, 10)


async def _trickle(port: int, head: bytes, body: bytes, pause: float) -> bytes:
    """Send ``head`` at once (when given) and then ``body`` a byte at a time;
    what the server answered (b"" when it just closed)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head)
        async with asyncio.timeout(30):
            for byte in body:
                writer.write(bytes([byte]))
                await writer.drain()
                await asyncio.sleep(pause)
                if reader.at_eof() or reader._buffer:  # answered already
                    break
            return await reader.read()
    except ConnectionError:
        return b""
    finally:
        writer.close()


async def test_a_slow_body_is_cut_with_408(served, nc):
    body = orjson.dumps(GOAL)  # one byte every 0.3 s: the whole body would take 15 s
    head = (
        b"POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n" % len(body)
    )
    started = time.monotonic()
    answer = await _trickle(served, head, body, 0.3)
    assert answer.startswith(b"HTTP/1.1 408"), answer
    assert b"1 s" in answer
    assert time.monotonic() - started < 10
    assert await stored_messages(nc.jetstream()) == []


async def test_a_slow_request_head_is_cut(served):
    slow = b"POST /v1/events HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"y" * 100
    started = time.monotonic()
    assert await _trickle(served, b"", slow, 0.1) == b""
    assert time.monotonic() - started < 8  # the head timeout is 1 s; all of it takes 12 s


async def test_ingest_without_keys_warns_and_with_keys_wants_tokens(nats_server, caplog):
    port = free_port()
    stop = asyncio.Event()
    server = asyncio.create_task(
        run_ingest(PublisherSettings(nats=(nats_server.url,)), IngestSettings(port=port), stop=stop)
    )
    await _until_listening(port, server)
    stop.set()
    await asyncio.wait_for(server, 10)
    assert any("no --jwt-secret" in r.getMessage() for r in caplog.records)

    caplog.clear()
    stop = asyncio.Event()
    server = asyncio.create_task(
        run_ingest(
            PublisherSettings(nats=(nats_server.url,)),
            IngestSettings(port=port, jwt_secret=SECRET),
            stop=stop,
        )
    )
    await _until_listening(port, server)
    try:
        async with aiohttp.ClientSession() as session:
            url = f"http://127.0.0.1:{port}/v1/events"
            async with session.post(url, data=orjson.dumps(GOAL), headers=JSON) as response:
                assert response.status == 401
            good = bearer(token(publish=["match.>"]))
            async with session.post(url, data=orjson.dumps(GOAL), headers=good) as response:
                assert response.status == 202
    finally:
        stop.set()
        await asyncio.wait_for(server, 10)
    assert not any("no --jwt-secret" in r.getMessage() for r in caplog.records)


async def _until_listening(port: int, server: asyncio.Task) -> None:
    deadline = time.monotonic() + 20
    while True:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        except OSError:
            assert time.monotonic() < deadline and not server.done(), "ingest did not start"
            await asyncio.sleep(0.05)


# --- refused after checking the stream: still nothing stored --------------------------


async def test_a_feed_id_of_another_topic_refuses_the_batch_whole(open_client, js):
    assert (await post(open_client, [{**GOAL, "id": "x1"}]))[0] == 202
    status, body = await post(open_client, [{**CLOCK, "id": "x2"}, {**OTHER, "id": "x1"}])
    assert status == 409
    assert body["accepted"] == [] and body["errors"][0]["index"] == 1
    assert "match.1" in body["errors"][0]["error"]
    assert len(await stored_messages(js)) == 1


async def test_nats_lost_mid_batch_answers_what_was_stored(nats_server, nc, js):
    class StopsNatsAtTheThirdItem(TopicPublisher):
        count = 0

        async def publish(self, *args, **kwargs):
            self.count += 1
            if self.count == 3:
                nats_server.stop()
                while self._nc.is_connected:
                    await asyncio.sleep(0.01)
            return await super().publish(*args, **kwargs)

    items = [{**CLOCK, "data": {"minute": m}, "id": f"m{m}"} for m in range(5)]
    app = make_app(StopsNatsAtTheThirdItem(nc, feed_ids=await FeedIds.open(js)))
    async with TestClient(TestServer(app)) as client:
        status, body = await post(client, items)
        assert status == 503
        assert [a["seq"] for a in body["accepted"]] == [1, 2]
        assert body["errors"][0]["index"] == 2
        nats_server.start()
        deadline = time.monotonic() + 10
        while not nc.is_connected:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        status, body = await post(client, items)  # the retry stores the rest once
        assert status == 202
        assert [(a["seq"], a["duplicate"]) for a in body["accepted"]] == [
            (1, True), (2, True), (3, False), (4, False), (5, False)
        ]  # fmt: skip
    assert_topic_log(await stored_messages(js))


async def test_requests_beyond_the_concurrency_limit_are_503_unread(publisher, js):
    app = make_app(publisher, max_concurrent=2, body_timeout=30)
    async with TestClient(TestServer(app)) as client:
        stalled = []
        for _ in range(2):  # two requests that never finish their bodies
            _, writer = await asyncio.open_connection(client.host, client.port)
            writer.write(
                b"POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Content-Length: 100\r\n\r\n{"
            )
            await writer.drain()
            stalled.append(writer)
        await asyncio.sleep(0.3)
        status, body = await post(client, [GOAL])
        assert status == 503 and "2 requests at once" in body["errors"][0]["error"]
        for writer in stalled:
            writer.close()
        await asyncio.sleep(0.3)
        assert (await post(client, [GOAL]))[0] == 202
    assert len(await stored_messages(js)) == 1
