"""The Python client at the edges, against real gateways: ``on_error`` hears
about connection failures, and a ``rate_limited`` answer never loses a topic
(it is asked for again later, as one request)."""

from __future__ import annotations

import asyncio

from scorecast.client import Backoff, ScorecastClient
from scorecast.natsserver import free_port
from tests.support import ws_url

FAST = Backoff(min_delay=0.05, max_delay=0.2)


async def until(condition, timeout: float = 15.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.02)


async def test_on_error_hears_of_a_connection_that_failed():
    errors = []
    client = ScorecastClient(
        f"ws://127.0.0.1:{free_port()}/ws", topics=["match.1"], on_error=errors.append,
        backoff=FAST,
    )  # fmt: skip
    client.start()
    try:
        await until(lambda: len(errors) >= 2)
    finally:
        await client.close()
    assert {error.code for error in errors} == {"connection_failed"}
    assert all(error.request_id is None and "127.0.0.1" in error.message for error in errors)


async def test_on_error_hears_of_a_refused_handshake(js, make_gateway):
    gateway = await make_gateway(jwt_secret="edges-test-secret-long-enough-for-hs256")
    errors = []
    client = ScorecastClient(
        ws_url(gateway), token=lambda: "not-a-jwt", topics=["match.1"], on_error=errors.append,
        backoff=FAST,
    )  # fmt: skip
    client.start()
    try:
        await until(lambda: errors)
    finally:
        await client.close()
    assert errors[0].code == "handshake_refused" and "401" in errors[0].message


async def test_a_rate_limited_subscribe_keeps_every_topic_and_is_asked_again(js, make_gateway):
    gateway = await make_gateway(message_burst=1, messages_per_second=2.0)
    errors = []
    client = ScorecastClient(ws_url(gateway), topics=["match.1"], on_error=errors.append)
    client.start()
    try:
        await client.wait_for("match.1", lambda view: view.pending is None)
        # the burst is one message: the second and third are refused for now
        await client.subscribe("match.2")
        await client.subscribe("match.3")
        await client.subscribe("match.1")  # a held topic, restarted: refused too
        await until(lambda: any(error.code == "rate_limited" for error in errors))
        assert client.topics == ["match.1", "match.2", "match.3"]
        for topic in client.topics:
            await client.wait_for(topic, lambda view: view.pending is None, timeout=15)
    finally:
        await client.close()
    assert all(error.topics == () for error in errors)
