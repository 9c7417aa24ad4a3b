"""publishers.stream against a real nats-server: the SCORES stream and TopicPublisher."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import nats
import orjson
import pytest
from nats.js.errors import NotFoundError

from scorecast.protocol import STREAM_NAME
from scorecast.protocol.envelope import encode_envelope
from scorecast.protocol.merge_patch import apply_patch
from scorecast.publishers.errors import CorruptTopic, FeedIdConflict, JetStreamUnavailable
from scorecast.publishers.stream import TopicPublisher, ensure_stream


async def stored_messages(js, topic: str | None = None) -> list[dict[str, Any]]:
    """Every message of SCORES in stream order (of one topic): headers and envelope."""
    info = await js.stream_info(STREAM_NAME)
    messages = []
    for stream_seq in range(max(info.state.first_seq, 1), info.state.last_seq + 1):
        try:
            msg = await js.get_msg(STREAM_NAME, seq=stream_seq)
        except NotFoundError:
            continue  # removed by the per-subject limit
        envelope = orjson.loads(msg.data)
        if topic is None or envelope["topic"] == topic:
            messages.append({"subject": msg.subject, "headers": msg.headers, **envelope})
    return messages


def assert_topic_log(envelopes: list[dict[str, Any]]) -> None:
    """seq runs 1..n, and each state is the previous one with the data patch applied."""
    assert [e["seq"] for e in envelopes] == list(range(1, len(envelopes) + 1))
    state = None
    for envelope in envelopes:
        state = apply_patch(state, envelope["data"])
        assert envelope["state"] == state, envelope["seq"]


@pytest.fixture
async def js(nc):
    js = nc.jetstream()
    await ensure_stream(js)
    return js


# --- ensure_stream --------------------------------------------------------------------


async def test_ensure_stream_creates_the_contract_config(nc):
    js = nc.jetstream()
    await ensure_stream(js, history=50)
    config = (await js.stream_info(STREAM_NAME)).config
    assert config.subjects == ["scores.>"]
    assert config.storage == "file"
    assert config.discard == "old"
    assert config.max_msgs_per_subject == 50
    assert config.duplicate_window == 120.0
    assert config.num_replicas == 1


async def test_ensure_stream_is_idempotent_even_concurrently(nc, nats_server):
    others = [await nats.connect(nats_server.url) for _ in range(3)]
    try:
        clients = [nc, *others]
        await asyncio.gather(*(ensure_stream(c.jetstream(), history=10) for c in clients))
        await asyncio.gather(*(ensure_stream(c.jetstream(), history=10) for c in clients))
    finally:
        for other in others:
            await other.close()
    assert (await nc.jetstream().stream_info(STREAM_NAME)).config.max_msgs_per_subject == 10


async def test_ensure_stream_updates_history_and_keeps_other_settings(nc):
    js = nc.jetstream()
    await ensure_stream(js, history=1000)
    config = (await js.stream_info(STREAM_NAME)).config
    await js.update_stream(config.evolve(allow_direct=True))  # an operator's own setting
    publisher = TopicPublisher(nc)
    for minute in range(8):
        await publisher.publish("match.1", "clock", {"minute": minute})

    await ensure_stream(js, history=3)

    info = await js.stream_info(STREAM_NAME)
    assert info.config.max_msgs_per_subject == 3
    assert info.config.allow_direct is True
    assert info.state.messages == 3
    assert [e["seq"] for e in await stored_messages(js, "match.1")] == [6, 7, 8]


# --- TopicPublisher -------------------------------------------------------------------


async def test_publish_numbers_from_one_and_merges_the_state(nc, js):
    publisher = TopicPublisher(nc)
    patches = [
        {"home": {"score": 0}, "away": {"score": 0}, "minute": 0},
        {"minute": 12},
        {"home": {"score": 1}, "minute": 13},
        {"minute": None, "period": "HT"},
    ]
    before = time.time()
    results = [await publisher.publish("match.7", "goal", patch) for patch in patches]

    assert [r.seq for r in results] == [1, 2, 3, 4]
    assert not any(r.duplicate for r in results)
    assert results[-1].state == {"home": {"score": 1}, "away": {"score": 0}, "period": "HT"}
    stored = await stored_messages(js)
    assert_topic_log(stored)
    for result, patch, envelope in zip(results, patches, stored, strict=True):
        assert envelope["subject"] == "scores.match.7"
        assert set(envelope) - {"subject", "headers"} == {
            "topic",
            "seq",
            "ts",
            "kind",
            "data",
            "state",
        }
        assert envelope["topic"] == "match.7"
        assert envelope["kind"] == "goal"
        assert envelope["data"] == patch
        assert envelope["state"] == result.state
        assert isinstance(envelope["ts"], float)
        assert before <= envelope["ts"] == result.ts <= time.time()
        assert envelope["headers"]["Nats-Msg-Id"] == f"match.7:{envelope['seq']}"


async def test_explicit_ts_is_kept(nc, js):
    published = await TopicPublisher(nc).publish("match.1", "clock", {"m": 1}, ts=1764412345.125)
    assert published.ts == 1764412345.125
    assert (await stored_messages(js))[0]["ts"] == 1764412345.125


async def test_a_feed_event_published_twice_is_stored_once(nc, js, nats_server):
    publisher = TopicPublisher(nc)
    first = await publisher.publish("match.2", "goal", {"home": 1}, feed_id="feed-17")
    again = await publisher.publish("match.2", "goal", {"home": 1}, feed_id="feed-17")
    nxt = await publisher.publish("match.2", "clock", {"minute": 3}, feed_id="feed-18")
    async with await _connection(nats_server) as other:
        restarted = await TopicPublisher(other).publish(
            "match.2", "goal", {"home": 1}, feed_id="feed-17"
        )

    assert (first.seq, first.duplicate) == (1, False)
    assert (again.seq, again.duplicate, again.state) == (1, True, {"home": 1})
    assert (nxt.seq, nxt.duplicate) == (2, False)
    assert (restarted.seq, restarted.duplicate) == (1, True)
    stored = await stored_messages(js)
    assert [e["headers"]["Nats-Msg-Id"] for e in stored] == ["feed-17", "feed-18"]
    assert_topic_log(stored)


async def test_a_feed_event_stored_by_another_publisher_is_a_duplicate(nc, js, nats_server):
    publisher = TopicPublisher(nc)
    assert await publisher.current("match.3") is None  # known empty: expects seq 0 next
    async with await _connection(nats_server) as other:
        await TopicPublisher(other).publish("match.3", "goal", {"away": 1}, feed_id="x-1")
    result = await publisher.publish("match.3", "goal", {"away": 1}, feed_id="x-1")
    assert (result.seq, result.duplicate, result.state) == (1, True, {"away": 1})
    assert len(await stored_messages(js)) == 1


async def test_our_own_message_stored_before_a_lost_ack_is_not_stored_twice(nc, js):
    publisher = TopicPublisher(nc)
    assert await publisher.current("match.4") is None
    ts = 1764412345.5
    # What a first attempt would have stored before its acknowledgement got lost.
    body = encode_envelope("match.4", 1, ts, "clock", {"minute": 1}, {"minute": 1})
    await js.publish("scores.match.4", body, headers={"Nats-Msg-Id": "match.4:1"})

    result = await publisher.publish("match.4", "clock", {"minute": 1}, ts=ts)

    assert (result.seq, result.duplicate) == (1, False)
    assert len(await stored_messages(js)) == 1
    assert (await publisher.publish("match.4", "clock", {"minute": 2})).seq == 2


async def test_a_feed_id_of_another_topic_is_a_conflict(nc, js):
    publisher = TopicPublisher(nc)
    await publisher.publish("match.5", "goal", {"home": 1}, feed_id="shared-id")
    with pytest.raises(FeedIdConflict) as caught:
        await publisher.publish("match.6", "goal", {"home": 1}, feed_id="shared-id")
    assert caught.value.other_topic == "match.5"


async def test_two_connections_racing_on_one_topic_store_seqs_without_gap(nc, js, nats_server):
    async with await _connection(nats_server) as other:
        a, b = TopicPublisher(nc), TopicPublisher(other)

        async def burst(publisher: TopicPublisher, name: str) -> list[int]:
            results = await asyncio.gather(
                *(publisher.publish("match.9", "clock", {name: i}) for i in range(100))
            )
            return [r.seq for r in results]

        seqs_a, seqs_b = await asyncio.gather(burst(a, "a"), burst(b, "b"))

    assert sorted(seqs_a + seqs_b) == list(range(1, 201))
    stored = await stored_messages(js, "match.9")
    assert_topic_log(stored)
    assert len(stored) == 200
    sent = {("a", i) for i in range(100)} | {("b", i) for i in range(100)}
    assert {next(iter(e["data"].items())) for e in stored} == sent
    assert stored[-1]["state"] == {"a": 99, "b": 99}


async def test_a_stale_publisher_reapplies_its_patch_on_the_newest_state(nc, js, nats_server):
    a = TopicPublisher(nc)
    await a.publish("match.8", "kickoff", {"home": 0, "away": 0})
    async with await _connection(nats_server) as other:
        await TopicPublisher(other).publish("match.8", "goal", {"home": 1})
    result = await a.publish("match.8", "goal", {"away": 1})
    assert (result.seq, result.state) == (3, {"home": 1, "away": 1})
    assert_topic_log(await stored_messages(js))


async def test_a_restarted_publisher_resumes_seq_and_state(nc, js, nats_server):
    await TopicPublisher(nc).publish("match.1", "kickoff", {"minute": 0, "score": "0-0"})
    await TopicPublisher(nc).publish("match.1", "clock", {"minute": 1})
    async with await _connection(nats_server) as other:
        restarted = TopicPublisher(other)
        current = await restarted.current("match.1")
        result = await restarted.publish("match.1", "goal", {"score": "1-0"})
    assert (current.seq, current.state) == (2, {"minute": 1, "score": "0-0"})
    assert (result.seq, result.state) == (3, {"minute": 1, "score": "1-0"})


async def test_a_topic_whose_newest_message_is_not_an_envelope_is_refused(nc, js):
    await js.publish("scores.match.66", b"not json")
    with pytest.raises(CorruptTopic):
        await TopicPublisher(nc).publish("match.66", "clock", {"minute": 1})


async def test_publishing_without_nats_fails_fast(nc, js, nats_server):
    publisher = TopicPublisher(nc)
    await publisher.publish("match.1", "clock", {"minute": 1})
    nats_server.stop()
    await _until(lambda: not nc.is_connected)
    started = time.monotonic()
    with pytest.raises(JetStreamUnavailable):
        await publisher.publish("match.1", "clock", {"minute": 2})
    assert time.monotonic() - started < 0.5
    assert not publisher.connected


async def _connection(nats_server) -> nats.NATS:
    return await nats.connect(nats_server.url)


async def _until(condition, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)
