"""``scorecast replay FILE``: publish a recorded NDJSON feed, at its pace or faster.

Each line is a feed item (:mod:`publishers.feed`, docs/FEEDS.md) that may
carry ``at`` (seconds since the recording began) or ``ts`` (wall clock when
recorded). An item is due ``at`` seconds after the first, or ``ts`` minus
the first recorded ``ts``; an item with neither is due with the one before
it. Time never runs backwards: an item due earlier than its predecessor goes
right after it. ``speed`` 2 plays twice as fast, 0 as fast as possible.

The envelopes carry the wall clock of the replay, not of the recording
(``ts`` is "publisher wall clock" in the contract). Items with an ``id`` are
stored once, however often and however late the file is replayed (for 48
hours at least, :mod:`publishers.feed_ids`); a repeat is reported as a
duplicate with the seq it was stored as.

Nothing is half-published for a reason known in advance: the whole file is
read and checked first (every bad line is reported as ``FILE:LINE: reason``),
then the events are checked against the topics' stored state (feed ids of
other topics, envelopes over the NATS limit); only then does publishing
start. A NATS failure while publishing stops the replay; replaying the file
again stores the rest (the ids of what was stored come back as duplicates).
"""

from __future__ import annotations

import asyncio
import dataclasses
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from scorecast.publishers.connection import open_publisher
from scorecast.publishers.errors import InvalidFeed, PublishError
from scorecast.publishers.feed import FeedEvent, check_item, parse_line
from scorecast.publishers.settings import PublisherSettings, ReplaySettings
from scorecast.publishers.stream import Published, TopicPublisher

__all__ = ["SAMPLES", "Replayed", "load_feed", "replay", "run_replay", "schedule"]

SAMPLES = Path(__file__).parent / "samples"


@dataclass(slots=True)
class Replayed:
    """What a replay did, item by item, in the file's order."""

    results: list[tuple[FeedEvent, Published]] = field(default_factory=list)

    @property
    def stored(self) -> int:
        return sum(1 for _, published in self.results if not published.duplicate)

    @property
    def duplicates(self) -> int:
        return sum(1 for _, published in self.results if published.duplicate)

    def __len__(self) -> int:
        return len(self.results)


def load_feed(path: str | Path) -> list[FeedEvent]:
    """The items of a recorded feed; InvalidFeed, by line number, if any is bad.

    A missing or unreadable file raises OSError.
    """
    events: list[FeedEvent] = []
    problems: list[tuple[int | None, str]] = []
    for number, line in enumerate(Path(path).read_bytes().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            event = check_item(parse_line(line), paced=True)
        except ValueError as exc:
            problems.append((number, str(exc)))
            continue
        events.append(dataclasses.replace(event, line=number))
    if problems:
        raise InvalidFeed(problems)
    return events


def schedule(events: Iterable[FeedEvent]) -> list[tuple[float, FeedEvent]]:
    """Each event with the second, from the start of the replay, it is due at."""
    planned: list[tuple[float, FeedEvent]] = []
    due = 0.0
    first_ts: float | None = None
    for event in events:
        if event.at is not None:
            due = max(due, event.at)
        elif event.ts is not None:
            first_ts = event.ts if first_ts is None else first_ts
            due = max(due, event.ts - first_ts)
        planned.append((due, event))
    return planned


async def replay(
    publisher: TopicPublisher,
    events: Iterable[FeedEvent],
    *,
    speed: float = 1.0,
    stop: asyncio.Event | None = None,
    report: Callable[[FeedEvent, Published], None] | None = None,
) -> Replayed:
    """Publish ``events`` in order, paced by ``speed``; what was stored and
    what was a duplicate. ``report`` is called after each item."""
    if speed < 0:
        raise ValueError("speed must be 0 (as fast as possible) or positive")
    events = list(events)
    problems = await publisher.check([(e.topic, e.kind, e.data, e.id) for e in events])
    if problems:
        raise InvalidFeed([(events[i].line or i, str(problem)) for i, problem in problems])
    loop = asyncio.get_running_loop()
    start = loop.time()
    done = Replayed()
    for due, event in schedule(events):
        if stop is not None and stop.is_set():
            break
        if speed > 0:
            await asyncio.sleep(start + due / speed - loop.time())
        published = await publisher.publish(event.topic, event.kind, event.data, feed_id=event.id)
        done.results.append((event, published))
        if report is not None:
            report(event, published)
    return done


async def run_replay(
    publisher: PublisherSettings,
    path: str | Path,
    settings: ReplaySettings | None = None,
    *,
    report: Callable[[FeedEvent, Published], None] | None = None,
    stop: asyncio.Event | None = None,
) -> Replayed:
    """Read and check ``path``, connect as ``publisher`` says (giving up after
    ``connect_timeout`` seconds with :class:`~publishers.errors.NatsUnreachable`),
    replay at ``speed``, close."""
    settings = settings or ReplaySettings()
    events = load_feed(path)
    nc, topics = await open_publisher(
        publisher, name="scorecast-replay", give_up_after=settings.connect_timeout
    )
    try:
        return await replay(topics, events, speed=settings.speed, report=report, stop=stop)
    finally:
        await nc.close()


async def replay_command(
    publisher: PublisherSettings, settings: ReplaySettings, name: str, stop: asyncio.Event
) -> int:
    """``scorecast replay``: one line per item, a summary, and the exit status
    (0 done, 1 bad lines / NATS unreachable / NATS lost, 2 missing file)."""

    def report(event: FeedEvent, published: Published) -> None:
        what = "duplicate of" if published.duplicate else "stored as"
        print(f"{name}:{event.line}: {event.topic} {what} seq {published.seq}", flush=True)

    try:
        done = await run_replay(publisher, name, settings, report=report, stop=stop)
    except OSError as exc:
        print(f"scorecast replay: {name}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    except InvalidFeed as exc:
        for line, reason in exc.problems:
            print(f"{name}:{line}: {reason}", file=sys.stderr)
        print(f"scorecast replay: {len(exc.problems)} bad line(s); nothing published",
              file=sys.stderr)  # fmt: skip
        return 1
    except PublishError as exc:
        print(f"scorecast replay: {exc}", file=sys.stderr)
        return 1
    print(f"stored {done.stored} events, {done.duplicates} duplicates", flush=True)
    return 0
