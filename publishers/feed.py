"""The feed item format, shared by ``scorecast ingest`` and ``scorecast replay``.

One item is a JSON object::

    {"topic": "match.4711", "kind": "goal", "data": {...}, "id": "feed-123"}

- ``topic``: a topic of PROTOCOL.md section 1;
- ``kind``: 1 to 64 characters;
- ``data``: a JSON object, the merge patch against the topic's current state;
- ``id`` (optional): the feed's event id, 1 to 256 printable ASCII characters
  without surrounding spaces; it becomes ``Nats-Msg-Id``, so the same item
  sent twice within two minutes is stored once;
- recorded feeds only: ``at`` (seconds since the start of the recording) or
  ``ts`` (seconds since the epoch) for pacing the replay.

Other fields are ignored. A batch is a JSON object, a JSON array of objects,
or NDJSON (one object per line, blank lines skipped). Pure functions, no I/O.

Hostile input is refused here, before anything is published: ``data`` nested
deeper than :data:`MAX_DEPTH` levels, integers outside the 64-bit range
(JSON parsers elsewhere would turn them into floats silently, and the
envelope encoder cannot write them), numbers out of the double range. The
full format, with its JSON Schema, is in docs/FEEDS.md and
``publishers/feed.schema.json``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

import msgspec

from scorecast.protocol.topics import is_valid_topic
from scorecast.publishers.errors import InvalidFeed

__all__ = [
    "MAX_DEPTH",
    "MAX_ID_LENGTH",
    "MAX_KIND_LENGTH",
    "FeedEvent",
    "Unreadable",
    "check_batch",
    "check_item",
    "parse_line",
    "split_batch",
]

MAX_DEPTH = 32  # levels of objects/arrays inside ``data``
MAX_KIND_LENGTH = 64
_INT_MIN, _INT_MAX = -(2**63), 2**64 - 1  # what the envelope encoder can write
MAX_ID_LENGTH = 256
_FEED_ID = re.compile(r"[\x21-\x7e](?:[\x20-\x7e]*[\x21-\x7e])?")


@dataclass(frozen=True, slots=True)
class FeedEvent:
    topic: str
    kind: str
    data: dict[str, Any]
    id: str | None = None
    at: float | None = None  # recorded feeds: offset from the recording's start
    ts: float | None = None  # recorded feeds: wall clock of the recording
    line: int | None = None  # recorded feeds: line number in the file


@dataclass(frozen=True, slots=True)
class Unreadable:
    """A line of an NDJSON body that is not JSON; reported, never published."""

    reason: str


def split_batch(body: bytes) -> list[Any]:
    """The items of a body: a JSON object, a JSON array, or NDJSON lines."""
    try:
        value = _decode(body) if body.strip() else []
    except ValueError:
        return [parse_line(line) for line in body.splitlines() if line.strip()]
    return value if isinstance(value, list) else [value]


def parse_line(line: bytes) -> Any:
    """One NDJSON line as a JSON value, or Unreadable saying why not."""
    try:
        return _decode(line)
    except ValueError as exc:
        return Unreadable(str(exc))


def _decode(text: bytes) -> Any:
    # msgspec keeps integers of any size as ints (orjson would make floats of
    # those beyond 64 bits), so that check_item can refuse them by name
    try:
        return msgspec.json.decode(text)
    except msgspec.DecodeError as exc:
        raise ValueError(f"not JSON: {exc}") from None
    except RecursionError:
        raise ValueError("not JSON this program accepts: nested too deeply") from None


def check_value(value: Any, *, max_depth: int = MAX_DEPTH) -> None:
    """ValueError when ``value`` nests deeper than ``max_depth`` or holds a
    number the envelope cannot carry. Iterative: no recursion to exhaust."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            if depth >= max_depth:
                raise ValueError(f"'data' nested deeper than {max_depth} levels")
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
        elif isinstance(item, bool) or item is None or isinstance(item, str):
            continue
        elif isinstance(item, int):
            if not _INT_MIN <= item <= _INT_MAX:
                raise ValueError(f"integer {str(item)[:30]} is outside the 64-bit range")
        elif isinstance(item, float) and not math.isfinite(item):
            raise ValueError("numbers must be finite")


def check_batch(items: list[Any], *, paced: bool = False) -> list[FeedEvent]:
    """Every item as a FeedEvent, or InvalidFeed listing every bad one by index."""
    events: list[FeedEvent] = []
    problems: list[tuple[int | None, str]] = []
    for index, item in enumerate(items):
        try:
            events.append(check_item(item, paced=paced))
        except ValueError as exc:
            problems.append((index, str(exc)))
    if problems:
        raise InvalidFeed(problems)
    return events


def check_item(item: Any, *, paced: bool = False) -> FeedEvent:
    """One item as a FeedEvent; ValueError saying what is wrong otherwise."""
    if isinstance(item, Unreadable):
        raise ValueError(item.reason)
    if not isinstance(item, dict):
        raise ValueError("an event must be a JSON object")
    topic = item.get("topic")
    if not is_valid_topic(topic):
        raise ValueError(f"invalid topic {str(topic)[:60]!r}")
    kind = item.get("kind")
    if not isinstance(kind, str) or not 1 <= len(kind) <= MAX_KIND_LENGTH:
        raise ValueError(f"'kind' must be a string of 1 to {MAX_KIND_LENGTH} characters")
    data = item.get("data")
    if not isinstance(data, dict):
        raise ValueError("'data' must be a JSON object (a merge patch)")
    check_value(data)
    feed_id = item.get("id")
    if feed_id is not None and not (
        isinstance(feed_id, str) and len(feed_id) <= MAX_ID_LENGTH and _FEED_ID.fullmatch(feed_id)
    ):
        raise ValueError(
            f"'id' must be 1 to {MAX_ID_LENGTH} printable ASCII characters, "
            "not starting or ending with a space"
        )
    if not paced:
        return FeedEvent(topic, kind, data, feed_id)
    return FeedEvent(topic, kind, data, feed_id, _seconds(item, "at"), _seconds(item, "ts"))


def _seconds(item: dict[str, Any], key: str) -> float | None:
    value = item.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"'{key}' must be a number of seconds")
    if value < 0:
        raise ValueError(f"'{key}' must not be negative")
    return float(value)
