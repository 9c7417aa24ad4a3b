"""Access control and limits, each through a real WebSocket handshake or
connection, with a bystander checking that others kept receiving."""

from __future__ import annotations

import asyncio
import time

import jwt
import orjson
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from tests.support import RawClient, RawPublisher, Recorder, ws_url

SECRET = "test-secret-that-is-long-enough-for-hs256"


def token(exp_in: float = 60, topics: list[str] | None = None, secret: str = SECRET) -> str:
    claims: dict = {"exp": int(time.time() + exp_in), "sub": "tester"}
    if topics is not None:
        claims["topics"] = topics
    return jwt.encode(claims, secret, algorithm="HS256")


async def refused(url: str, **kwargs):
    with pytest.raises(InvalidStatus) as caught:
        async with connect(url, **kwargs):
            pass
    response = caught.value.response
    return response.status_code, response.body.decode(), response.headers


@pytest.mark.parametrize(
    ("query", "headers", "reason"),
    [
        ("", {}, "missing token"),
        ("?token=garbage", {}, "invalid token"),
        (f"?token={token(exp_in=-60)}", {}, "token expired"),
        (f"?token={token(secret='another-secret-another-secret-xx')}", {}, "invalid token"),
        ("", {"Authorization": "Bearer nope"}, "invalid token"),
    ],
)
async def test_bad_tokens_are_refused_401(make_gateway, js, query, headers, reason):
    gw = await make_gateway(jwt_secret=SECRET)
    status, body, _ = await refused(ws_url(gw, query), additional_headers=headers)
    assert status == 401 and body.strip() == reason
    assert gw.node.figures()["refused"] == {"unauthorized": 1}
    assert gw.node.clients == set()


async def test_token_without_exp_is_refused(make_gateway, js):
    gw = await make_gateway(jwt_secret=SECRET)
    no_exp = jwt.encode({"sub": "x"}, SECRET, algorithm="HS256")
    status, body, _ = await refused(ws_url(gw, f"?token={no_exp}"))
    assert status == 401 and "exp" in body


async def test_topics_claim_forbids_some_and_lets_others_through(make_gateway, js):
    gw = await make_gateway(jwt_secret=SECRET)
    allowed = token(topics=["match.*", "football.>"])
    client = await Recorder.open(
        ws_url(gw), additional_headers={"Authorization": f"Bearer {allowed}"}
    )
    request = ["match.1", "basketball.x", "football.live", "match.1.extra", "football"]
    await client.send({"type": "subscribe", "id": 5, "topics": request})
    subscribed = await client.wait_for(lambda m: m["type"] == "subscribed")
    assert subscribed["topics"] == ["match.1", "football.live"]
    errors = [m for m in client.messages if m["type"] == "error"]
    assert [(e["code"], e["id"]) for e in errors] == [("forbidden", 5)] * 3
    await client.close()


async def test_auth_refresh_and_expiry_closes_4001(make_gateway, js):
    gw = await make_gateway(jwt_secret=SECRET)
    client = await Recorder.open(ws_url(gw, f"?token={token(exp_in=2)}"))
    await client.send({"type": "auth", "id": 1, "token": "garbage"})
    error = await client.wait_for(lambda m: m["type"] == "error")
    assert (error["code"], error["id"]) == ("unauthorized", 1)
    fresh = token(exp_in=3)
    await client.send({"type": "auth", "id": 2, "token": fresh})
    authed = await client.wait_for(lambda m: m["type"] == "authed")
    assert authed["id"] == 2 and authed["exp"] == jwt.decode(fresh, SECRET, ["HS256"])["exp"]
    await asyncio.wait_for(client.ws.wait_closed(), 10)
    assert client.close_code == 4001
    assert time.time() >= authed["exp"] - 0.05


async def test_origin_allow_list_403(make_gateway, js):
    gw = await make_gateway(allowed_origins=("https://scores.example",))
    status, body, _ = await refused(ws_url(gw), origin="https://evil.example")
    assert status == 403 and "origin" in body
    async with connect(ws_url(gw), origin="https://scores.example") as ws:
        assert b"welcome" in (await ws.recv()).encode()


async def test_connection_limit_503_then_counts_come_back(make_gateway, js):
    gw = await make_gateway(max_connections=20)
    clients = [await connect(ws_url(gw)) for _ in range(20)]
    status, body, headers = await refused(ws_url(gw))
    assert status == 503 and "limit" in body and int(headers["Retry-After"]) > 0
    for ws in clients:
        await ws.close()
    for _ in range(100):
        if not gw.node.clients:
            break
        await asyncio.sleep(0.05)
    assert gw.node.figures()["connections"] == 0 and gw.node.hub.by_connection == {}
    async with connect(ws_url(gw)):
        pass


async def test_connection_rate_limit_429(make_gateway, js):
    gw = await make_gateway(connections_per_ip_per_second=3)
    for _ in range(3):
        async with connect(ws_url(gw)):
            pass
    status, body, headers = await refused(ws_url(gw))
    assert status == 429 and "rate" in body and int(headers["Retry-After"]) >= 1


async def test_message_rate_limit_then_4029(make_gateway, js):
    gw = await make_gateway(messages_per_second=1, message_burst=5)
    publisher = RawPublisher(js)
    watcher = await Recorder.open(ws_url(gw))
    await watcher.send({"type": "subscribe", "id": 1, "topics": ["match.9"]})
    await watcher.wait_for(lambda m: m["type"] == "snapshot")
    client = await Recorder.open(ws_url(gw))
    for n in range(20):
        await client.send({"type": "ping", "id": n})
    await asyncio.wait_for(client.ws.wait_closed(), 5)
    assert client.close_code == 4029
    limited = [m for m in client.messages if m.get("code") == "rate_limited"]
    assert limited and all(m["type"] == "error" for m in limited)
    await publisher.publish("match.9", {"x": 1})
    await watcher.wait_for(lambda m: m["type"] == "event")


async def test_oversized_frame_closes_1009(make_gateway, js):
    gw = await make_gateway(max_message_size=1024)
    client = await Recorder.open(ws_url(gw))
    await client.send({"type": "ping", "id": 1, "pad": "x" * 2000})
    await asyncio.wait_for(client.ws.wait_closed(), 5)
    assert client.close_code == 1009


async def test_too_many_topics_per_connection(make_gateway, js):
    gw = await make_gateway(max_topics_per_connection=3)
    client = await Recorder.open(ws_url(gw))
    await client.send({"type": "subscribe", "id": 1, "topics": ["a", "b"]})
    await client.wait_for(lambda m: m["type"] == "subscribed")
    await client.send({"type": "subscribe", "id": 2, "topics": ["c", "d"]})
    error = await client.wait_for(lambda m: m["type"] == "error")
    assert (error["code"], error["id"]) == ("too_many_topics", 2)
    await client.send({"type": "subscribe", "id": 3, "topics": ["a", "c"]})
    assert (await client.wait_for(lambda m: m.get("id") == 3))["type"] == "subscribed"
    await client.close()


async def test_handshake_timeout_cuts_a_silent_socket(make_gateway, js):
    gw = await make_gateway(handshake_timeout=1.0)
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    writer.write(b"GET /ws HTTP/1.1\r\nHost: x\r\n")  # and never the rest
    started = time.monotonic()
    assert await asyncio.wait_for(reader.read(), 10) == b""  # the gateway hung up
    assert time.monotonic() - started < 5
    writer.close()
    assert not gw.handshaking and not gw.connections


async def test_a_client_that_never_answers_pings_is_closed_after_two_heartbeats(make_gateway, js):
    gw = await make_gateway(heartbeat=0.5)
    healthy = await Recorder.open(ws_url(gw))  # websockets answers pings by itself
    silent = await RawClient.open(gw.port)  # reads, never answers a ping
    await silent.send({"type": "subscribe", "id": 1, "topics": ["match.1"]})
    assert await silent.read_until(lambda m: False, timeout=10) is None
    assert silent.close_code == 1011
    silent.close()
    await asyncio.sleep(1.0)
    assert healthy.close_code is None
    await healthy.close()


async def test_pongs_taken_past_the_frame_parser_keep_the_connection_and_its_frames(
    make_gateway, js
):
    """A pong alone in a packet is recognised without websockets' parser (the
    gateway's fast path); one split over two packets, or glued to a request,
    still goes through the parser; either way the connection stays alive and
    its requests are answered in order."""
    gw = await make_gateway(heartbeat=0.5)
    client = await RawClient.open(gw.port)
    await client.send({"type": "subscribe", "id": 1, "topics": ["match.1"]})
    await client.read_until(lambda m: m["type"] == "snapshot")
    for _ in range(4):  # two heartbeats' worth of proof of life
        await client.send_frame(0xA, b"")
        await asyncio.sleep(0.3)
    mask = b"\x01\x02\x03\x04"
    client.writer.write(b"\x8a\x82" + mask[:2])  # a pong, split
    await client.writer.drain()
    await asyncio.sleep(0.05)
    client.writer.write(mask[2:] + bytes(b ^ m for b, m in zip(b"hi", mask, strict=False)))
    await client.send({"type": "ping", "id": 7})
    assert (await client.read_until(lambda m: m["type"] == "pong"))["id"] == 7
    ping = orjson.dumps({"type": "ping", "id": 8})
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(ping))
    client.writer.write(b"\x8a\x80" + mask + b"\x81" + bytes((0x80 | len(ping),)) + mask + masked)
    assert (await client.read_until(lambda m: m["type"] == "pong"))["id"] == 8
    assert client.close_code is None and len(gw.node.clients) == 1
    client.close()


async def test_a_close_the_peer_never_answers_is_cut_after_the_close_timeout(make_gateway, js):
    gw = await make_gateway()
    mute = await RawClient.open(gw.port)  # will not read, so never answers our close
    await mute.send_frame(0x2, b"binary")  # closed with 4000 by the gateway
    for _ in range(100):
        if gw.closing:
            break
        await asyncio.sleep(0.05)
    assert len(gw.closing) == 1
    for _ in range(200):
        if not gw.connections:
            break
        await asyncio.sleep(0.05)
    assert not gw.connections and not gw.closing and not gw.node.clients
    mute.close()
