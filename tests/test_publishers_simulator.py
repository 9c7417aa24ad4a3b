"""The football model (pure, no event loop) and the simulator against a real nats-server."""

from __future__ import annotations

import asyncio
import random
import time
from collections import defaultdict
from itertools import pairwise
from typing import Any

import nats
import pytest

from scorecast.protocol.merge_patch import apply_patch
from scorecast.publishers.football import KEPT_EVENTS, League, Match, league_teams, live_line
from scorecast.publishers.settings import PublisherSettings, SimulatorSettings
from scorecast.publishers.simulator import LIVE_TOPIC, Simulator, run_simulator
from scorecast.publishers.stream import TopicPublisher, ensure_stream
from tests.test_publishers_stream import assert_topic_log, stored_messages

KINDS = {"kickoff", "clock", "goal", "card", "substitution", "period", "fulltime"}


def play(match: Match) -> list[tuple[str, dict[str, Any]]]:
    events = []
    while not match.finished:
        events.extend(match.advance())
    return events


def assert_believable(events: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    """One fixture, kick-off to full time, read as a client would; the final state."""
    assert events[0][0] == "kickoff"
    assert events[-1][0] == "fulltime"
    state: Any = None
    periods = []
    for kind, patch in events:
        assert kind in KINDS
        before = state
        state = apply_patch(state, patch)
        assert len(state["events"]) <= KEPT_EVENTS
        if before is None:
            continue
        scores = [(s["home"]["score"], s["away"]["score"]) for s in (before, state)]
        if kind == "goal":
            assert sum(scores[1]) == sum(scores[0]) + 1
            assert scores[1][0] >= scores[0][0] and scores[1][1] >= scores[0][1]
            assert state["events"][-1]["score"] == "{}-{}".format(*scores[1])
        else:
            assert scores[1] == scores[0]
        assert state["minute"] >= before["minute"]
        if state["period"] != before["period"]:
            periods.append(state["period"])
    assert periods == ["HT", "2H", "FT"]
    assert state["status"] == "finished"
    assert state["minute"] == 90
    return state


# --- the model, no event loop -------------------------------------------------------


def test_a_match_plays_out_believably():
    for match_id in range(40):
        events = play(Match(match_id, random.Random(match_id), loops=False))
        final = assert_believable(events)
        assert final["home"]["code"] != final["away"]["code"]
        assert 90 < len(events) < 140


def test_scores_and_cards_look_like_football():
    goals = reds = 0
    for match_id in range(200):
        final = play(Match(match_id, random.Random(match_id), loops=False))
        state = None
        for _, patch in final:
            state = apply_patch(state, patch)
        goals += state["home"]["score"] + state["away"]["score"]
        reds += state["home"]["red"] + state["away"]["red"]
    assert 1.8 < goals / 200 < 3.2
    assert reds / 200 < 0.5


def test_a_seed_makes_a_match_reproducible():
    first = play(Match(1000, random.Random("7:1000"), loops=False))
    again = play(Match(1000, random.Random("7:1000"), loops=False))
    other = play(Match(1000, random.Random("8:1000"), loops=False))
    assert first == again
    assert first != other


def test_a_resumed_match_carries_on_from_its_state():
    match = Match(5, random.Random(1))
    for _ in range(31):  # the kick-off, then 30 minutes
        match.advance()
    assert match.state["minute"] == 30
    resumed = Match(5, random.Random(2), state=match.state)
    kind, patch = resumed.advance()[0]
    assert (kind, patch) == ("clock", {"minute": 31})
    assert resumed.state["home"] == match.state["home"]


def test_a_looping_match_kicks_off_a_new_fixture_after_full_time():
    match = Match(5, random.Random(3), loops=True, break_minutes=2)
    kinds = []
    while kinds.count("kickoff") < 2:
        kinds.extend(kind for kind, _ in match.advance())
    assert kinds.count("fulltime") == 1
    assert match.state["minute"] == 0
    assert match.state["home"]["score"] == match.state["away"]["score"] == 0
    assert match.state["events"] == [{"minute": 0, "kind": "kickoff"}]


def test_live_line():
    state = play(Match(12, random.Random(4), loops=False))
    final = None
    for _, patch in state:
        final = apply_patch(final, patch)
    line = live_line(final)
    assert line == {
        "home": final["home"]["code"],
        "away": final["away"]["code"],
        "score": f"{final['home']['score']}-{final['away']['score']}",
        "minute": 90,
        "period": "FT",
    }
    assert live_line(None) is None
    assert live_line({"what": "ever"}) is None


def clubs_on_a_pitch(states: dict[Any, Any], *, finished: bool = False) -> list[str]:
    """The codes of every club in a fixture between kick-off and full time (or in
    any fixture, ``finished`` ones too), repeats kept."""
    return [
        state[team]["code"]
        for state in states.values()
        if isinstance(state, dict) and "home" in state
        if finished or state.get("period") != "FT"
        for team in ("home", "away")
    ]


def test_a_club_plays_one_match_at_a_time():
    """Fails on the old model: every match drew two of the 16 clubs on its own."""
    league = League.for_matches(20)
    matches = [
        Match(n, random.Random(n), league=league, halftime_minutes=1, break_minutes=1)
        for n in range(20)
    ]
    kickoffs = 0
    for _ in range(400):
        for match in matches:
            kickoffs += sum(kind == "kickoff" for kind, _ in match.advance())
            playing = clubs_on_a_pitch({m.id: m.state for m in matches})
            assert len(playing) == len(set(playing)), sorted(playing)
            held = clubs_on_a_pitch({m.id: m.state for m in matches}, finished=True)
            assert sorted(league.playing.elements()) == sorted(held)
    assert kickoffs >= 60  # fixtures came and went, clubs were freed and drawn again


def test_a_resumed_fixture_keeps_its_clubs_from_other_draws():
    league = League(TEAMS_OF_FOUR)
    first = Match(1, random.Random(1))
    for _ in range(3):
        first.advance()
    stored = {**first.state, "home": {**first.state["home"], "code": "AAA"}}
    stored["away"] = {**stored["away"], "code": "BBB"}
    Match(1, random.Random(2), state=stored, league=league)
    second = Match(2, random.Random(3), league=league)
    second.advance()
    assert {second.state["home"]["code"], second.state["away"]["code"]} == {"CCC", "DDD"}


TEAMS_OF_FOUR = (("A", "AAA"), ("B", "BBB"), ("C", "CCC"), ("D", "DDD"))


def test_a_league_has_clubs_enough_with_unique_names_and_codes():
    for count in (2, 16, 17, 220, 1000):
        teams = league_teams(count)
        assert len(teams) >= count
        assert len({name for name, _ in teams}) == len({code for _, code in teams}) == len(teams)
    assert len(League.for_matches(300).teams) >= 600


# --- the simulator, on a real nats-server ---------------------------------------------


@pytest.fixture
async def js(nc):
    js = nc.jetstream()
    await ensure_stream(js)
    return js


def by_topic(envelopes: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    topics = defaultdict(list)
    for envelope in envelopes:
        topics[envelope["topic"]].append(envelope)
    return topics


async def test_simulated_matches_are_stored_gapless_and_believable(nc, js):
    simulator = Simulator(
        TopicPublisher(nc),
        matches=3,
        minute_seconds=0.002,
        seed=42,
        loops=False,
        halftime_minutes=3,
    )
    await asyncio.wait_for(simulator.run(), timeout=20)

    topics = by_topic(await stored_messages(js))
    assert set(topics) == {"match.1000", "match.1001", "match.1002", LIVE_TOPIC}
    finals = {}
    for topic, envelopes in topics.items():
        assert_topic_log(envelopes)
        if topic != LIVE_TOPIC:
            events = [(e["kind"], e["data"]) for e in envelopes]
            finals[topic] = assert_believable(events)
            assert finals[topic]["id"] == int(topic.split(".")[1])
    assert simulator.published == sum(len(topics[t]) for t in finals)

    board = topics[LIVE_TOPIC]
    assert len(board) > 6
    assert {e["kind"] for e in board} <= {"kickoff", "clock", "goal", "period", "fulltime"}
    assert board[-1]["state"] == {topic.split(".")[1]: live_line(finals[topic]) for topic in finals}


async def test_a_restarted_simulator_resumes_every_match(nc, js, nats_server):
    topics = ("match.1000", "match.1001")

    async def run_until(client, stored: int) -> None:
        """Run a simulator until each match has ``stored`` messages (however
        long a busy machine takes), then stop it."""
        stop = asyncio.Event()
        simulator = Simulator(TopicPublisher(client), matches=2, minute_seconds=0.004)
        task = asyncio.create_task(simulator.run(stop))
        for _ in range(600):
            counts = by_topic(await stored_messages(js))
            if all(len(counts.get(topic, ())) >= stored for topic in topics):
                break
            await asyncio.sleep(0.05)
        stop.set()
        await asyncio.wait_for(task, timeout=5)

    await run_until(nc, 6)
    first = by_topic(await stored_messages(js))
    other = await nats.connect(nats_server.url)
    try:
        await run_until(other, max(len(first[topic]) for topic in topics) + 3)
    finally:
        await other.close()
    second = by_topic(await stored_messages(js))

    for topic in topics:
        assert len(second[topic]) > len(first[topic]) > 5
        assert_topic_log(second[topic])
        kinds = [e["kind"] for e in second[topic]]
        assert kinds.count("kickoff") == 1, "the restart carried on, it did not kick off again"
        resumed = second[topic][len(first[topic])]
        before = first[topic][-1]["state"]
        assert resumed["state"]["home"]["name"] == before["home"]["name"]
        assert resumed["state"]["minute"] >= before["minute"]
    assert_topic_log(second[LIVE_TOPIC])


async def test_load_mode_paces_events_by_rate(nc, js):
    stop = asyncio.Event()
    simulator = Simulator(TopicPublisher(nc), matches=4, event_rate=400, seed=1)
    started = time.monotonic()
    task = asyncio.create_task(simulator.run(stop))
    await asyncio.sleep(0.5)
    stop.set()
    await asyncio.wait_for(task, timeout=5)
    elapsed = time.monotonic() - started
    # paced: never faster than the rate (a busy machine may make it slower,
    # which is not what this test is about)
    assert 0 < simulator.published <= 400 * elapsed + 40
    for envelopes in by_topic(await stored_messages(js)).values():
        assert_topic_log(envelopes)


async def test_run_simulator_connects_and_creates_the_stream(nats_server, nc):
    await asyncio.wait_for(
        run_simulator(
            PublisherSettings(nats=(nats_server.url,), stream_history=500),
            SimulatorSettings(matches=1, minute_seconds=0.001, seed=3, loops=False),
        ),
        timeout=20,
    )
    js = nc.jetstream()
    assert (await js.stream_info("SCORES")).config.max_msgs_per_subject == 500
    final = by_topic(await stored_messages(js))["match.1000"][-1]
    assert final["kind"] == "fulltime"


async def test_the_simulator_rides_out_a_nats_restart(nats_server):
    client = await nats.connect(nats_server.url, reconnect_time_wait=0.05)
    try:
        await ensure_stream(client.jetstream())
        stop = asyncio.Event()
        simulator = Simulator(TopicPublisher(client), matches=2, minute_seconds=0.005, seed=5)
        task = asyncio.create_task(simulator.run(stop))
        await asyncio.sleep(0.15)
        nats_server.stop()
        await asyncio.sleep(0.2)
        nats_server.start()
        while not client.is_connected:
            await asyncio.sleep(0.01)
        before = simulator.published
        await asyncio.sleep(0.8)  # the retry pause is 0.5 s
        stop.set()
        await asyncio.wait_for(task, timeout=5)
        assert simulator.published > before

        topics = by_topic(await stored_messages(client.jetstream()))
        for topic in ("match.1000", "match.1001"):
            envelopes = topics[topic]
            assert_topic_log(envelopes)
            for before, after in pairwise(envelopes):
                if after["kind"] == "kickoff":  # only a looping match's next fixture
                    assert before["kind"] == "fulltime"
                else:
                    assert after["state"]["minute"] >= before["state"]["minute"]
    finally:
        await client.close()


async def test_no_club_is_in_two_simultaneous_matches(nc, js):
    """Read back in stream order, the stored fixtures never have one club on two
    pitches at once, across more matches than the 16 base clubs make pairs of and
    several fixtures per topic. Fails on the old simulator at the first kick-offs."""
    stop = asyncio.Event()
    simulator = Simulator(
        TopicPublisher(nc),
        matches=12,
        event_rate=4000,  # load mode: half time and breaks pass at once
        seed=3,
        halftime_minutes=1,
        break_minutes=1,
    )
    task = asyncio.create_task(simulator.run(stop))
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30
    while simulator.published < 12 * 2 * 110 and loop.time() < deadline:
        await asyncio.sleep(0.1)
    stop.set()
    await asyncio.wait_for(task, timeout=10)

    states: dict[str, Any] = {}
    kickoffs = 0
    for envelope in await stored_messages(js):
        if envelope["topic"] == LIVE_TOPIC:
            continue
        states[envelope["topic"]] = envelope["state"]
        kickoffs += envelope["kind"] == "kickoff"
        playing = clubs_on_a_pitch(states)
        assert len(playing) == len(set(playing)), (envelope["topic"], sorted(playing))
    assert len(states) == 12
    assert kickoffs > 12, "some topics kicked off a second fixture"
