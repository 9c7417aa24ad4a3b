"""Bad input gets the contract's answer, and other clients keep receiving."""

from __future__ import annotations

import asyncio

import pytest

from tests.support import RawPublisher, Recorder, check_sequence, ws_url


@pytest.fixture
async def bystander(gateway, js):
    """A well-behaved client on match.1, and a publisher feeding it."""
    publisher = RawPublisher(js)
    await publisher.publish("match.1", {"minute": 0})
    client = await Recorder.open(ws_url(gateway))
    await client.send({"type": "subscribe", "id": 1, "topics": ["match.1"]})
    await client.wait_for(lambda m: m["type"] == "snapshot")
    yield client, publisher
    await client.close()


async def errors_after(client: Recorder, frame, count: int = 1) -> list[dict]:
    await client.send(frame)
    await client.wait_for(
        lambda m: len([x for x in client.messages if x["type"] == "error"]) >= count
    )
    return [m for m in client.messages if m["type"] == "error"]


@pytest.mark.parametrize(
    ("frame", "code", "request_id"),
    [
        ("this is not json", "bad_request", None),
        ("[1, 2, 3]", "bad_request", None),
        ({"type": "teleport", "id": 3}, "unknown_type", 3),
        ({"type": "teleport"}, "unknown_type", None),
        ({"type": "subscribe", "id": 4, "topics": ["match.1", "no way"]}, "invalid_topic", 4),
        ({"type": "subscribe", "topics": ["match.1"]}, "bad_request", None),
        ({"type": "subscribe", "id": 5, "topics": []}, "bad_request", 5),
        ({"type": "subscribe", "id": 6, "topics": ["a"], "since": {"a": -3}}, "bad_request", 6),
        ({"type": "subscribe", "id": 7, "topics": [f"t.{n}" for n in range(101)]},
         "too_many_topics", 7),
    ],
)  # fmt: skip
async def test_bad_message_gets_error_and_connection_stays(
    gateway, bystander, frame, code, request_id
):
    watcher, publisher = bystander
    client = await Recorder.open(ws_url(gateway))
    [error] = await errors_after(client, frame)
    assert error["code"] == code and error["id"] == request_id and error["message"]
    assert not [m for m in client.messages if m["type"] in ("subscribed", "snapshot")]
    await client.send({"type": "ping", "id": 99})
    await client.wait_for(lambda m: m["type"] == "pong")
    await publisher.publish("match.1", {"minute": 1})
    await watcher.wait_for(lambda m: m.get("seq") == 2)
    assert check_sequence(watcher.of("match.1")) == 2
    await client.close()


async def test_binary_frame_closes_4000_and_others_keep_receiving(gateway, bystander):
    watcher, publisher = bystander
    client = await Recorder.open(ws_url(gateway))
    await client.send(b"\x00\x01binary")
    await asyncio.wait_for(client.ws.wait_closed(), 5)
    assert client.close_code == 4000
    await publisher.publish("match.1", {"minute": 1})
    await watcher.wait_for(lambda m: m.get("seq") == 2)


async def test_repeated_abuse_closes_4000_after_ten_are_forgiven(gateway, bystander):
    client = await Recorder.open(ws_url(gateway))
    for _ in range(10):
        await client.send("nope")
    await client.send({"type": "ping", "id": 1})
    await client.wait_for(lambda m: m["type"] == "pong")
    assert client.close_code is None
    await client.send("nope")
    await asyncio.wait_for(client.ws.wait_closed(), 5)
    assert client.close_code == 4000
    assert len([m for m in client.messages if m["type"] == "error"]) == 11


async def test_http_endpoints(gateway):
    import urllib.request

    def get(path):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{gateway.port}{path}") as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode()

    assert await asyncio.to_thread(get, "/healthz") == (200, "ok\n")
    assert await asyncio.to_thread(get, "/readyz") == (200, "ready\n")
    status, body = await asyncio.to_thread(get, "/nowhere")
    assert status == 404 and "/ws" in body
    status, body = await asyncio.to_thread(get, "/metrics")
    assert status == 200 and "scorecast_connections_opened_total" in body
