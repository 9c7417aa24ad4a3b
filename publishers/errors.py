"""Errors of the publishers, split by who is at fault.

::

    ScorecastError                  (protocol.errors)
    └── PublishError                root of this package
        ├── FeedError               the feed sent something we refuse
        │   ├── InvalidFeed         items that break the feed format (all of them, by index)
        │   ├── FeedIdConflict      a feed id already names an event of another topic
        │   ├── EnvelopeTooLarge    the event with the topic's full state exceeds max_payload
        │   └── EnvelopeProblem     the patch cannot be applied or the event encoded
        └── BackendError            NATS/JetStream failed us; never the feed's fault
            ├── JetStreamUnavailable  not connected, no answer, or no SCORES stream
            │   └── NatsUnreachable   gave up connecting after a timeout (one-shot commands)
            ├── TopicContended      still losing the race for a topic after every attempt
            ├── CorruptTopic        the newest message of a topic is not an envelope
            └── StreamConfigError   the server refused the SCORES stream configuration

``JetStreamUnavailable`` and ``TopicContended`` are transient: retrying the same
events with the same feed ids later stores each of them once.
"""

from __future__ import annotations

from scorecast.protocol.errors import ScorecastError

__all__ = [
    "BackendError",
    "CorruptTopic",
    "EnvelopeProblem",
    "EnvelopeTooLarge",
    "FeedError",
    "FeedIdConflict",
    "InvalidFeed",
    "JetStreamUnavailable",
    "NatsUnreachable",
    "PublishError",
    "StreamConfigError",
    "TopicContended",
]


class PublishError(ScorecastError):
    """Root of every error the publishers raise on purpose."""


class FeedError(PublishError):
    """The feed (an HTTP client, a recorded file) sent something we refuse."""


class InvalidFeed(FeedError):
    """One or more items break the feed format.

    ``problems`` lists ``(index, reason)`` for every bad item; ``index`` is the
    item's position (a line number for files), ``None`` for the body as a whole.
    """

    def __init__(self, problems: list[tuple[int | None, str]]) -> None:
        super().__init__("; ".join(f"{index}: {reason}" for index, reason in problems[:5]))
        self.problems = problems


class FeedIdConflict(FeedError):
    """A feed id was already stored as an event of another topic (``other_seq``
    of ``other_topic`` when known)."""

    def __init__(
        self, feed_id: str, topic: str, other_topic: str, other_seq: int | None = None
    ) -> None:
        where = other_topic if other_seq is None else f"{other_topic} seq {other_seq}"
        super().__init__(f"feed id {feed_id!r} already names an event of {where}")
        self.feed_id = feed_id
        self.topic = topic
        self.other_topic = other_topic
        self.other_seq = other_seq


class EnvelopeTooLarge(FeedError):
    """The envelope (patch plus the topic's full state) exceeds the NATS max_payload."""

    def __init__(self, topic: str, size: int) -> None:
        super().__init__(f"the event of {topic!r} would be {size} bytes, over the NATS limit")
        self.topic = topic
        self.size = size


class EnvelopeProblem(FeedError):
    """The patch cannot be applied to the topic's state, or the event encoded."""

    def __init__(self, topic: str, reason: str) -> None:
        super().__init__(f"the event of {topic!r} cannot be encoded: {reason}")
        self.topic = topic


class BackendError(PublishError):
    """NATS or JetStream failed us."""


class JetStreamUnavailable(BackendError):
    """Not connected, no answer in time, or no SCORES stream: retry later."""


class NatsUnreachable(JetStreamUnavailable):
    """A one-shot command gave up connecting to NATS; the message names the URLs."""


class TopicContended(BackendError):
    """Other publishers kept writing the topic; gave up after ``attempts`` tries."""

    def __init__(self, topic: str, attempts: int) -> None:
        super().__init__(f"topic {topic!r} still contended after {attempts} attempts")
        self.topic = topic
        self.attempts = attempts


class CorruptTopic(BackendError):
    """The newest message of a topic is not an envelope, so its seq is unknown."""

    def __init__(self, topic: str, reason: str) -> None:
        super().__init__(f"newest message of {topic!r} is not an envelope: {reason}")
        self.topic = topic


class StreamConfigError(BackendError):
    """The server refused to create or update the SCORES stream."""
