"""Replaying recorded feeds, against a real nats-server."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import orjson
import pytest

from scorecast.publishers.errors import InvalidFeed
from scorecast.publishers.feed import FeedEvent
from scorecast.publishers.replay import SAMPLES, load_feed, replay, run_replay, schedule
from scorecast.publishers.settings import PublisherSettings, ReplaySettings
from scorecast.publishers.stream import TopicPublisher, ensure_stream
from tests.test_publishers_stream import assert_topic_log, stored_messages

DERBY = SAMPLES / "derby.ndjson"


def write_feed(path, items) -> str:
    path.write_bytes(b"".join(orjson.dumps(item) + b"\n" for item in items))
    return str(path)


def test_the_sample_is_a_believable_match():
    events = load_feed(DERBY)
    assert 25 <= len(events) <= 40
    match = [e for e in events if e.topic == "match.9001"]
    assert match[0].kind == "kickoff"
    assert match[-1].kind == "fulltime"
    assert [due for due, _ in schedule(events)] == sorted(due for due, _ in schedule(events))


def test_schedule_reads_at_and_ts_and_never_goes_back():
    def event(**pacing):
        return FeedEvent("match.1", "clock", {}, **pacing)

    events = [event(ts=1000.0), event(), event(ts=1002.5), event(at=1.0), event(at=4.0)]
    assert [due for due, _ in schedule(events)] == [0.0, 0.0, 2.5, 2.5, 4.0]


def test_a_bad_line_is_reported_by_line_number(tmp_path):
    path = tmp_path / "bad.ndjson"
    path.write_bytes(b'{"topic": "match.1", "kind": "clock", "data": {}}\n\n{oops\n[1]\n')
    with pytest.raises(InvalidFeed) as caught:
        load_feed(path)
    assert [line for line, _ in caught.value.problems] == [3, 4]


@pytest.fixture
async def js(nc):
    js = nc.jetstream()
    await ensure_stream(js)
    return js


async def test_the_sample_is_published_fully_and_in_order(nc, js):
    events = load_feed(DERBY)
    done = await replay(TopicPublisher(nc), events, speed=0)

    assert (done.stored, done.duplicates) == (len(events), 0)
    stored = await stored_messages(js)
    assert [(e["topic"], e["kind"], e["data"]) for e in stored] == [
        (e.topic, e.kind, e.data) for e in events
    ]
    match = [e for e in stored if e["topic"] == "match.9001"]
    assert_topic_log(match)
    assert_topic_log([e for e in stored if e["topic"] == "football.live"])
    final = match[-1]["state"]
    assert (final["period"], final["home"]["score"], final["away"]["score"]) == ("FT", 3, 2)


async def test_replay_keeps_the_recorded_pace(nc, js, tmp_path):
    items = [{"topic": "match.1", "kind": "clock", "data": {}, "at": m / 10} for m in range(4)]
    path = write_feed(tmp_path / "paced.ndjson", items)
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert (await replay(TopicPublisher(nc), load_feed(path), speed=2)).stored == 4
    assert 0.14 <= loop.time() - started < 1.0  # 0.3 s of recording at twice the speed


async def test_run_replay_connects_creates_the_stream_and_dedupes_ids(nats_server, nc, tmp_path):
    path = write_feed(
        tmp_path / "ids.ndjson",
        [{"topic": "match.1", "kind": "goal", "data": {"home": n}, "id": f"g{n}"} for n in (1, 2)],
    )
    publisher = PublisherSettings(nats=(nats_server.url,), stream_history=100)
    first = await run_replay(publisher, path, ReplaySettings(speed=0))
    again = await run_replay(publisher, path, ReplaySettings(speed=0))
    assert (first.stored, first.duplicates) == (2, 0)
    assert (again.stored, again.duplicates) == (0, 2)
    js = nc.jetstream()
    assert (await js.stream_info("SCORES")).config.max_msgs_per_subject == 100
    assert [e["seq"] for e in await stored_messages(js)] == [1, 2]


# --- the command: what it prints, how it fails -----------------------------------------


def scorecast(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "scorecast.cli", "--log-level", "error", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_replay_help_points_to_the_feed_format():
    answer = scorecast("replay", "--help")
    assert answer.returncode == 0
    assert "docs/FEEDS.md" in answer.stdout


def test_a_missing_file_is_one_line_and_exit_2(tmp_path):
    answer = scorecast("replay", str(tmp_path / "nope.ndjson"), "--nats", "nats://127.0.0.1:1")
    assert answer.returncode == 2
    assert answer.stderr.strip().count("\n") == 0, answer.stderr
    assert "nope.ndjson" in answer.stderr and "Traceback" not in answer.stderr


def test_bad_lines_are_named_by_file_and_line_and_nothing_is_published(nats_server, tmp_path):
    path = tmp_path / "bad.ndjson"
    path.write_bytes(
        b'{"topic": "match.1", "kind": "clock", "data": {}}\n\n{oops\n'
        b'{"topic": "match.1", "kind": "clock", "data": {"n": 99999999999999999999}}\n'
    )
    answer = scorecast("replay", str(path), "--nats", nats_server.url, "--speed", "0")
    assert answer.returncode == 1
    lines = answer.stderr.strip().splitlines()
    assert lines[0].startswith(f"{path}:3: not JSON")
    assert lines[1].startswith(f"{path}:4: ") and "64-bit" in lines[1]
    assert "nothing published" in lines[-1] and "Traceback" not in answer.stderr
    assert answer.stdout == ""


def test_an_unreachable_nats_gives_up_naming_the_url(tmp_path):
    from scorecast.natsserver import free_port

    url = f"nats://127.0.0.1:{free_port()}"
    answer = scorecast("replay", str(DERBY), "--nats", url, "--connect-timeout", "2")
    assert answer.returncode == 1
    assert url in answer.stderr and "unreachable" in answer.stderr
    assert "Traceback" not in answer.stderr
