"""``scorecast replay FILE``: publish a recorded NDJSON feed, at its pace or faster.

Each line is a feed item (:mod:`publishers.feed`) that may carry ``at``
(seconds since the recording began) or ``ts`` (wall clock when recorded).
An item is due ``at`` seconds after the first, or ``ts`` minus the first
recorded ``ts``; an item with neither is due with the one before it. Time
never runs backwards: an item due earlier than its predecessor goes right
after it. ``speed`` 2 plays twice as fast, 0 as fast as possible.

The envelopes carry the wall clock of the replay, not of the recording
(``ts`` is "publisher wall clock" in the contract). Items with an ``id`` are
stored once even when the file is replayed twice within two minutes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from pathlib import Path

from publishers.connection import open_publisher
from publishers.errors import InvalidFeed
from publishers.feed import FeedEvent, check_item, parse_line
from publishers.stream import TopicPublisher

__all__ = ["SAMPLES", "load_feed", "replay", "run_replay", "schedule"]

SAMPLES = Path(__file__).parent / "samples"


def load_feed(path: str | Path) -> list[FeedEvent]:
    """The items of a recorded feed; InvalidFeed, by line number, if any is bad."""
    events: list[FeedEvent] = []
    problems: list[tuple[int | None, str]] = []
    for number, line in enumerate(Path(path).read_bytes().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            events.append(check_item(parse_line(line), paced=True))
        except ValueError as exc:
            problems.append((number, str(exc)))
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
) -> int:
    """Publish ``events`` in order, paced by ``speed``; the count published."""
    if speed < 0:
        raise ValueError("speed must be 0 (as fast as possible) or positive")
    loop = asyncio.get_running_loop()
    start = loop.time()
    count = 0
    for due, event in schedule(events):
        if stop is not None and stop.is_set():
            break
        if speed > 0:
            await asyncio.sleep(start + due / speed - loop.time())
        await publisher.publish(event.topic, event.kind, event.data, feed_id=event.id)
        count += 1
    return count


async def run_replay(
    nats_url: str | Sequence[str],
    path: str | Path,
    *,
    speed: float = 1.0,
    history: int = 1000,
    replicas: int = 1,
) -> int:
    """Connect, make sure the SCORES stream exists, replay ``path``, close."""
    events = load_feed(path)
    nc, publisher = await open_publisher(
        nats_url, name="scorecast-replay", history=history, replicas=replicas
    )
    try:
        return await replay(publisher, events, speed=speed)
    finally:
        await nc.close()
