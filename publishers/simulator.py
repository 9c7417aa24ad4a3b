"""Simulated football: N concurrent matches on ``match.<id>``, and ``football.live``.

Each match is a :class:`~publishers.football.Match` on its own task, moved on
one match minute every ``minute_seconds`` (timed mode), or as fast as a shared
budget of ``event_rate`` events per second allows (load mode: the same
matches, paced by event count; half time and breaks pass instantly).

Decisions where a spec was silent:

- Resuming: every match starts from its topic's newest stored state, so a
  restarted simulator carries on mid-match with the same ``seq``. A finished
  match is followed, after ``break_minutes``, by a new fixture (new teams,
  0-0) on the same topic when ``loops`` is on, drawn from the clubs not
  playing at that moment (one league per simulator, at least two clubs per
  match: a club never plays two matches at once); without ``loops`` it stays
  finished and the simulator ends once every match has.
- Every event carries a fresh feed id, so an event retried after NATS went
  away mid-publish is stored once.
- ``football.live`` maps match id (a string) to a compact line. It is patched
  on kick-offs, goals, period changes and every ``board_every`` minutes;
  changes that arrive while a patch is in flight are coalesced into the next
  one, whose kind is the weightiest among them (goal > fulltime > period >
  kickoff > clock). A finished match keeps its FT line until its topic kicks
  off the next fixture, which replaces the line. Lines of matches this
  simulator does not run are left alone (another simulator may own them).
"""

from __future__ import annotations

import asyncio
import logging
import random
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from scorecast.publishers.connection import open_publisher
from scorecast.publishers.errors import JetStreamUnavailable, PublishError, TopicContended
from scorecast.publishers.football import League, Match, live_line
from scorecast.publishers.settings import PublisherSettings, SimulatorSettings
from scorecast.publishers.stream import Published, TopicPublisher

__all__ = ["LIVE_TOPIC", "LiveBoard", "Simulator", "run_simulator"]

log = logging.getLogger(__name__)

LIVE_TOPIC = "football.live"
_WEIGHT = {"goal": 4, "fulltime": 3, "period": 2, "kickoff": 2, "clock": 0}
_TRANSIENT = (JetStreamUnavailable, TopicContended)
T = TypeVar("T")


class Simulator:
    """Runs matches ``first_id`` .. ``first_id + matches - 1`` through ``publisher``."""

    def __init__(
        self,
        publisher: TopicPublisher,
        *,
        matches: int,
        minute_seconds: float = 1.0,
        seed: int | None = None,
        loops: bool = True,
        event_rate: float | None = None,
        first_id: int = 1000,
        halftime_minutes: int = 15,
        break_minutes: int = 10,
        board_every: int = 5,
        publish_retry: float = 0.5,
    ) -> None:
        if minute_seconds <= 0 and not event_rate:
            raise ValueError("minute_seconds must be positive")
        if event_rate is not None and event_rate <= 0:
            raise ValueError("event_rate must be positive")
        self._publisher = publisher
        self._ids = range(first_id, first_id + matches)
        self._minute_seconds = minute_seconds
        self._seed = seed
        self._loops = loops
        self._pacer = _Pacer(event_rate) if event_rate else None
        self._halftime_minutes = halftime_minutes
        self._break_minutes = break_minutes
        self._board_every = board_every
        self._retry = publish_retry
        self._board = LiveBoard(publisher, retry=publish_retry)
        self._league = League.for_matches(matches)  # a club plays one match at a time
        self.published = 0  # match events stored, for load reports

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Play until ``stop`` is set, or until every match is over (``loops`` off)."""
        stop = stop or asyncio.Event()
        await self._board.load()
        resumed = await asyncio.gather(*(self._resume(match_id) for match_id in self._ids))
        matches = [match for match in resumed if match is not None]
        for match in matches:
            self._note(match, "clock")
        board_done = asyncio.Event()
        async with asyncio.TaskGroup() as group:
            group.create_task(self._board.run(board_done))
            try:
                async with asyncio.TaskGroup() as players:
                    for match in matches:
                        players.create_task(self._play(match, stop))
            finally:
                board_done.set()

    async def _resume(self, match_id: int) -> Match | None:
        """The match as stored on its topic; None when the topic cannot be written."""
        rng = random.Random(f"{self._seed}:{match_id}") if self._seed is not None else None
        try:
            current = await _retrying(
                lambda: self._publisher.current(f"match.{match_id}"), self._retry
            )
        except PublishError as exc:
            log.error("match.%s: %s; not simulated", match_id, exc)
            return None
        return Match(
            match_id,
            rng or random.Random(),
            state=current.state if current else None,
            loops=self._loops,
            halftime_minutes=self._halftime_minutes,
            break_minutes=self._break_minutes,
            league=self._league,
        )

    async def _play(self, match: Match, stop: asyncio.Event) -> None:
        topic = f"match.{match.id}"
        loop = asyncio.get_running_loop()
        next_at = loop.time() + match.rng.uniform(0, self._minute_seconds)
        while not match.finished and not stop.is_set():
            if self._pacer is None:
                if await _sleep(stop, next_at - loop.time()):
                    return
                next_at = max(next_at + self._minute_seconds, loop.time())
                events = match.advance()
            else:
                events = match.advance()
                if not events:
                    await asyncio.sleep(0)
                    continue
                if await _sleep(stop, self._pacer.reserve(len(events))):
                    return
            stored = match.state
            for kind, patch in events:
                published = await self._publish(topic, kind, patch, stop)
                if published is None:
                    return
                self.published += 1
                stored = published.state
                if kind in _WEIGHT and (kind != "clock" or self._on_the_board_minute(stored)):
                    self._note(match, kind, stored)
            match.resume(stored)  # a no-op unless another publisher wrote the topic too

    async def _publish(
        self, topic: str, kind: str, patch: dict[str, Any], stop: asyncio.Event
    ) -> Published | None:
        """Publish until stored; None once stopped or when the topic cannot be written.

        One feed id for every retry, so a publish whose outcome was unknown is
        stored once.
        """
        feed_id = f"sim-{uuid.uuid4().hex}"
        while True:
            try:
                return await self._publisher.publish(topic, kind, patch, feed_id=feed_id)
            except _TRANSIENT as exc:
                log.warning("%s: %s; retrying", topic, exc)
            except PublishError as exc:
                log.error("%s: %s; match stopped", topic, exc)
                return None
            if await _sleep(stop, self._retry):
                return None

    def _on_the_board_minute(self, state: dict[str, Any]) -> bool:
        return state.get("minute", 0) % self._board_every == 0 and not state.get("added")

    def _note(self, match: Match, kind: str, state: Any = None) -> None:
        line = live_line(match.state if state is None else state)
        if line is not None:
            self._board.note(str(match.id), line, kind)


class LiveBoard:
    """The ``football.live`` aggregate: match id -> compact line, patched in batches."""

    def __init__(
        self, publisher: TopicPublisher, topic: str = LIVE_TOPIC, *, retry: float = 0.5
    ) -> None:
        self._publisher = publisher
        self.topic = topic
        self._retry = retry  # seconds before a failed read or patch is tried again
        self._lines: dict[str, Any] = {}  # as stored
        self._pending: dict[str, Any] = {}
        self._kind = "clock"
        self._wake = asyncio.Event()

    async def load(self) -> None:
        """Start from the board as stored."""
        try:
            current = await _retrying(lambda: self._publisher.current(self.topic), self._retry)
        except PublishError as exc:  # publishing will say so again; the matches go on
            log.error("%s: %s", self.topic, exc)
            return
        self._lines = dict(current.state) if current and isinstance(current.state, dict) else {}

    def note(self, match_id: str, line: dict[str, Any], kind: str) -> None:
        if match_id not in self._pending and self._lines.get(match_id) == line:
            return
        self._pending[match_id] = line
        if _WEIGHT.get(kind, 0) > _WEIGHT.get(self._kind, 0):
            self._kind = kind
        self._wake.set()

    async def run(self, done: asyncio.Event) -> None:
        """Publish pending lines until ``done`` is set, then flush what is left once."""
        while not done.is_set():
            waker = asyncio.ensure_future(self._wake.wait())
            finisher = asyncio.ensure_future(done.wait())
            await asyncio.wait({waker, finisher}, return_when=asyncio.FIRST_COMPLETED)
            waker.cancel()
            finisher.cancel()
            if not await self._flush() and await _sleep(done, self._retry):
                break
        await self._flush()

    async def _flush(self) -> bool:
        """Publish what is pending as one patch; False when that failed."""
        self._wake.clear()
        patch = {key: line for key, line in self._pending.items() if self._lines.get(key) != line}
        kind, self._pending, self._kind = self._kind, {}, "clock"
        if not patch:
            return True
        try:
            published = await self._publisher.publish(self.topic, kind, patch)
        except PublishError as exc:
            log.warning("%s: %s", self.topic, exc)
            self._pending = {**patch, **self._pending}
            self._kind = max(kind, self._kind, key=lambda k: _WEIGHT.get(k, 0))
            return False
        self._lines = dict(published.state)
        return True


class _Pacer:
    """Spaces events evenly at ``rate`` per second, however many tasks ask."""

    def __init__(self, rate: float) -> None:
        self._interval = 1.0 / rate
        self._next = 0.0

    def reserve(self, events: int) -> float:
        """Book slots for ``events``; the seconds to wait before publishing them."""
        now = asyncio.get_running_loop().time()
        start = max(self._next, now)
        self._next = start + events * self._interval
        return start - now


async def _sleep(stop: asyncio.Event, seconds: float) -> bool:
    """Sleep, waking early when ``stop`` is set; True when stopped."""
    if seconds > 0 and not stop.is_set():
        try:
            async with asyncio.timeout(seconds):
                await stop.wait()
        except TimeoutError:
            pass
    return stop.is_set()


async def _retrying(read: Callable[[], Awaitable[T]], retry: float) -> T:
    """A start-up read, retried every ``retry`` seconds while NATS is away."""
    while True:
        try:
            return await read()
        except _TRANSIENT as exc:
            log.warning("reading JetStream: %s; retrying", exc)
            await asyncio.sleep(retry)


async def run_simulator(
    publisher: PublisherSettings,
    simulation: SimulatorSettings | None = None,
    *,
    stop: asyncio.Event | None = None,
) -> None:
    """Connect as ``publisher`` says, make sure the SCORES stream exists,
    simulate as ``simulation`` says, close."""
    nc, topics = await open_publisher(publisher, name="scorecast-simulate")
    s = simulation or SimulatorSettings()
    try:
        simulator = Simulator(
            topics,
            matches=s.matches,
            minute_seconds=s.minute_seconds,
            seed=s.seed,
            loops=s.loops,
            event_rate=s.event_rate,
            first_id=s.first_id,
            publish_retry=s.publish_retry,
        )
        await simulator.run(stop)
    finally:
        await nc.close()
