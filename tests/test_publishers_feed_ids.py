"""Durable feed ids (PROTOCOL.md section 2), against a real nats-server: an id
stored once is never stored again, after JetStream's duplicate window (here
shortened to half a second), across publisher restarts and processes, and
after the bucket forgot it while the stream still holds the event."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time

import nats
import orjson
import pytest

from scorecast.protocol.topics import subject_for
from scorecast.publishers.errors import FeedIdConflict
from scorecast.publishers.feed_ids import BUCKET, FeedIds, key_for
from scorecast.publishers.replay import SAMPLES, load_feed, replay, run_replay
from scorecast.publishers.settings import PublisherSettings, ReplaySettings
from scorecast.publishers.stream import TopicPublisher, ensure_stream
from tests.test_publishers_stream import assert_topic_log, stored_messages

WINDOW = 0.5  # seconds: the duplicate window, shortened for the test
DERBY = SAMPLES / "derby.ndjson"


async def publisher_on(url: str, *, ttl: float | None = None) -> tuple[nats.NATS, TopicPublisher]:
    """A fresh publisher process's worth: its own connection, no memory."""
    nc = await nats.connect(url)
    js = nc.jetstream()
    await ensure_stream(js, duplicate_window=WINDOW)
    return nc, TopicPublisher(nc, feed_ids=await FeedIds.open(js, ttl=ttl))


async def test_a_feed_replayed_after_the_window_stores_nothing_new(nats_server, nc):
    events = load_feed(DERBY)
    first = await run_replay(
        PublisherSettings(nats=(nats_server.url,), duplicate_window=WINDOW),
        DERBY,
        ReplaySettings(speed=0),
    )
    assert (first.stored, first.duplicates) == (len(events), 0)
    stored = await stored_messages(nc.jetstream())
    await asyncio.sleep(WINDOW * 3)

    again = await run_replay(
        PublisherSettings(nats=(nats_server.url,), duplicate_window=WINDOW),
        DERBY,
        ReplaySettings(speed=0),
    )
    assert (again.stored, again.duplicates) == (0, len(events))
    # each repeat names the event it was stored as
    assert [p.seq for _, p in again.results] == [p.seq for _, p in first.results]
    assert await stored_messages(nc.jetstream()) == stored
    final = [e for e in stored if e["topic"] == "match.9001"][-1]["state"]
    assert (final["period"], final["home"]["score"], final["away"]["score"]) == ("FT", 3, 2)


async def test_two_publishers_racing_with_the_same_ids_store_each_once(nats_server, nc):
    (nc_a, a), (nc_b, b) = [await publisher_on(nats_server.url) for _ in range(2)]
    try:
        events = load_feed(DERBY)
        results = await asyncio.gather(replay(a, events, speed=0), replay(b, events, speed=0))
        assert sum(r.stored for r in results) == len(events)
        await asyncio.sleep(WINDOW * 3)
        late = await replay(b, events, speed=0)
        assert late.stored == 0
    finally:
        await nc_a.close()
        await nc_b.close()
    stored = await stored_messages(nc.jetstream())
    assert len(stored) == len(events)
    for topic in ("match.9001", "football.live"):
        assert_topic_log([e for e in stored if e["topic"] == topic])


async def test_an_id_of_another_topic_is_a_conflict_naming_the_original(nats_server):
    nc, publisher = await publisher_on(nats_server.url)
    try:
        await publisher.publish("match.1", "clock", {"minute": 1})
        await publisher.publish("match.1", "goal", {"home": 1}, feed_id="goal-17")
        await asyncio.sleep(WINDOW * 3)
        with pytest.raises(FeedIdConflict, match=r"match\.1 seq 2"):
            await publisher.publish("match.2", "goal", {"home": 1}, feed_id="goal-17")
        again = await publisher.publish("match.1", "goal", {"home": 1}, feed_id="goal-17")
        assert (again.duplicate, again.seq, again.state) == (True, 2, {"minute": 1, "home": 1})
    finally:
        await nc.close()


async def test_a_crash_before_the_bucket_write_is_repaired_by_the_retry(nats_server):
    """The publisher died after JetStream stored the event and before it wrote
    the bucket; the feed retries within the window: a duplicate, and from
    then on the bucket remembers it."""
    nc, publisher = await publisher_on(nats_server.url)
    try:
        body = orjson.dumps(
            {"topic": "match.1", "seq": 1, "ts": time.time(), "kind": "goal", "data": {"h": 1},
             "state": {"h": 1}}
        )  # fmt: skip
        await nc.jetstream().publish(
            subject_for("match.1"), body, headers={"Nats-Msg-Id": "goal-1"}
        )
        kv = await nc.jetstream().key_value(BUCKET)
        with pytest.raises(nats.js.errors.KeyNotFoundError):
            await kv.get(key_for("goal-1"))
        retry = await publisher.publish("match.1", "goal", {"h": 1}, feed_id="goal-1")
        assert (retry.duplicate, retry.seq) == (True, 1)
        assert orjson.loads((await kv.get(key_for("goal-1"))).value)["seq"] == 1
        await asyncio.sleep(WINDOW * 3)
        later = await publisher.publish("match.1", "goal", {"h": 1}, feed_id="goal-1")
        assert (later.duplicate, later.seq) == (True, 1)
        assert len(await stored_messages(nc.jetstream())) == 1
    finally:
        await nc.close()


async def test_the_stream_still_holding_the_event_outlasts_the_bucket(nats_server, nc):
    """The bucket's TTL (2 s here, 48 h in production) passed, the topic still
    holds the event: the id is found in the topic's stored messages."""
    nc_a, a = await publisher_on(nats_server.url, ttl=2.0)
    try:
        await a.publish("match.1", "goal", {"home": 1}, feed_id="goal-1")
        await a.publish("match.1", "clock", {"minute": 3}, feed_id="clock-3")
    finally:
        await nc_a.close()
    await asyncio.sleep(3.5)  # past the bucket's TTL and the duplicate window
    kv = await nc.jetstream().key_value(BUCKET)
    with pytest.raises(nats.js.errors.KeyNotFoundError):
        await kv.get(key_for("goal-1"))
    nc_b, b = await publisher_on(nats_server.url, ttl=2.0)
    try:
        again = await b.publish("match.1", "goal", {"home": 1}, feed_id="goal-1")
        assert (again.duplicate, again.seq) == (True, 1)
        new = await b.publish("match.1", "clock", {"minute": 4}, feed_id="clock-4")
        assert (new.duplicate, new.seq) == (False, 3)
    finally:
        await nc_b.close()
    assert [e["seq"] for e in await stored_messages(nc.jetstream())] == [1, 2, 3]


def test_scorecast_replay_twice_after_the_window_prints_duplicates(nats_server, tmp_path):
    command = [
        sys.executable, "-m", "scorecast.cli", "--log-level", "error", "replay", str(DERBY),
        "--nats", nats_server.url, "--speed", "0", "--duplicate-window", str(WINDOW),
    ]  # fmt: skip
    first = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert first.returncode == 0, first.stderr
    count = len(load_feed(DERBY))
    assert f"stored {count} events, 0 duplicates" in first.stdout
    assert "derby.ndjson:1: match.9001 stored as seq 1" in first.stdout
    subprocess.run(["sleep", str(WINDOW * 3)], check=True)
    again = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert again.returncode == 0, again.stderr
    assert f"stored 0 events, {count} duplicates" in again.stdout
    assert "derby.ndjson:1: match.9001 duplicate of seq 1" in again.stdout
