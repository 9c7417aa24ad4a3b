"""The core's fault handling through real gateways on a real nats-server:
stream resets, a narrower refreshed token, supervised loops, callbacks that
only schedule work."""

from __future__ import annotations

import asyncio
import logging
import time

import jwt

from scorecast.gateway.supervise import Supervisor
from scorecast.protocol import STREAM_NAME
from tests.support import RawPublisher, Recorder, check_sequence, create_stream, ws_url

SECRET = "test-secret-that-is-long-enough-for-hs256"


async def subscribed(gw, topics: list[str], **kwargs) -> Recorder:
    client = await Recorder.open(ws_url(gw), **kwargs)
    await client.send({"type": "subscribe", "id": 1, "topics": topics})
    await client.wait_for(lambda m: m["type"] == "subscribed")
    return client


async def until(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


async def recreate(js) -> RawPublisher:
    await js.delete_stream(STREAM_NAME)
    await create_stream(js)
    return RawPublisher(js)


async def test_a_stream_recreated_under_a_client_gives_it_the_new_state(make_gateway, js):
    """Live seqs going back are a reset, not duplicates to drop: the client
    gets a snapshot of the new stream (the old gateway kept the old state)."""
    gw = await make_gateway()
    publisher = RawPublisher(js)
    for n in range(5):
        await publisher.publish("match.1", {"old": n})
    client = await subscribed(gw, ["match.1"])
    await client.wait_for(lambda m: m.get("seq") == 5)
    publisher = await recreate(js)
    await publisher.publish("match.1", {"new": 1})
    snapshot = await client.wait_for(lambda m: m["type"] == "snapshot" and m["seq"] == 1)
    assert snapshot["state"] == {"new": 1}
    await publisher.publish("match.1", {"new": 2})
    event = await client.wait_for(lambda m: m["type"] == "event" and m["seq"] == 2)
    assert event["data"] == {"new": 2}
    assert gw.node.figures()["topic_resets"] >= 1
    await client.close()


async def test_stream_reset_resyncs_every_held_topic_with_a_snapshot(make_gateway, js):
    gw = await make_gateway()
    publisher = RawPublisher(js)
    for topic in ("match.1", "match.2"):
        for n in range(3):
            await publisher.publish(topic, {"n": n})
    client = await subscribed(gw, ["match.1", "match.2"])
    for topic in ("match.1", "match.2"):
        await client.wait_for(lambda m, t=topic: m.get("topic") == t and m.get("seq") == 3)
    publisher = await recreate(js)
    await publisher.publish("match.2", {"fresh": True})
    assert gw.node.stream_reset() is None  # a plain call: it only schedules work
    first = await client.wait_for(lambda m: m.get("topic") == "match.1" and m["seq"] == 0)
    assert (first["type"], first["state"]) == ("snapshot", None)
    second = await client.wait_for(
        lambda m: m.get("topic") == "match.2" and m["type"] == "snapshot" and m["seq"] == 1
    )
    assert second["state"] == {"fresh": True}
    assert gw.node.figures()["stream_resets"] == 1
    await client.close()


async def test_resync_returns_at_once_and_catches_up(make_gateway, js):
    gw = await make_gateway()
    publisher = RawPublisher(js)
    client = await subscribed(gw, ["match.4"])
    await client.wait_for(lambda m: m["type"] == "snapshot")
    await gw.broker.unsubscribe("match.4")  # the live subscription is lost
    for n in range(3):
        await publisher.publish("match.4", {"n": n})
    assert gw.node.resync(None) is None  # not a coroutine to await inside nats-py
    await client.wait_for(lambda m: m.get("seq") == 3)
    assert check_sequence(client.of("match.4")) == 3
    await client.close()


def token(topics: list[str] | None = None) -> str:
    claims: dict = {"exp": int(time.time() + 60), "sub": "tester"}
    if topics is not None:
        claims["topics"] = topics
    return jwt.encode(claims, SECRET, algorithm="HS256")


async def test_a_narrower_refreshed_token_unsubscribes_what_it_no_longer_allows(make_gateway, js):
    gw = await make_gateway(jwt_secret=SECRET)
    publisher = RawPublisher(js)
    client = await subscribed(gw, ["match.1", "cup.1"], additional_headers={
        "Authorization": f"Bearer {token()}"
    })  # fmt: skip
    await client.wait_for(lambda m: m.get("topic") == "cup.1" and m["type"] == "snapshot")
    await client.send({"type": "auth", "id": 2, "token": token(["match.*"])})
    await client.wait_for(lambda m: m["type"] == "authed")
    error = await client.wait_for(lambda m: m["type"] == "error")
    assert (error["code"], error["id"]) == ("forbidden", 2) and "cup.1" in error["message"]
    await publisher.publish("cup.1", {"n": 1})
    await publisher.publish("match.1", {"n": 1})
    await client.wait_for(lambda m: m.get("topic") == "match.1" and m.get("seq") == 1)
    assert not [m for m in client.of("cup.1") if m["type"] == "event"]
    assert not gw.node.hub.topic("cup.1").holders  # only lingering (--topic-linger)
    await client.close()


async def test_a_loop_that_raises_is_restarted_and_counted(make_gateway, js):
    gw = await make_gateway()
    sweep, failures = gw.node.core.sweep, []

    def broken(now: float) -> None:
        if not failures:
            failures.append(now)
            raise RuntimeError("a bug in the sweep")
        sweep(now)

    gw.node.core.sweep = broken
    await until(lambda: gw.node.figures()["loop_restarts"] >= 1)
    calls = len(failures)
    await until(lambda: gw.node.supervisor.restarts.get("node sweep") == 1)
    assert calls == 1 and gw.node.figures()["tasks_failed"] == 0


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


async def test_the_supervisor_logs_failed_tasks_and_stop_awaits_them():
    supervisor = Supervisor()
    cancelled = asyncio.Event()
    lines = Lines()
    logging.getLogger("scorecast.supervise").addHandler(lines)

    async def fails() -> None:
        raise ValueError("lost")

    async def lives() -> None:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    supervisor.spawn(fails(), "doomed")
    supervisor.spawn(lives(), "long")
    await asyncio.sleep(0.05)
    logging.getLogger("scorecast.supervise").removeHandler(lines)
    assert supervisor.tasks_failed == 1 and lines.lines == ["task doomed failed"]
    await supervisor.stop()
    assert cancelled.is_set() and not supervisor.tasks
