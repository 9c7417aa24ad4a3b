"""The SCORES stream and the one way every publisher writes to it.

:func:`ensure_stream` creates or updates the JetStream stream of PROTOCOL.md
section 2. :class:`TopicPublisher` turns ``(topic, kind, patch)`` into the
next envelope of that topic and stores it so that a topic's ``seq`` runs
1, 2, 3... with no gap and no repeat, however many publishers write it:

- it sends ``Nats-Expected-Last-Subject-Sequence`` = the stream sequence of
  the topic's newest message as it knows it, so JetStream refuses the write
  when another publisher got there first (error 10071); it then re-reads the
  topic's newest message, re-applies the patch on top of it and tries again;
- it sends ``Nats-Msg-Id`` (the feed's id, else ``<topic>:<seq>``), so a
  retried publish inside the duplicate window is stored once, and checks and
  records feed ids in :mod:`publishers.feed_ids`, so that an id is stored
  once for 48 hours and more;
- a topic it has not seen yet is read from JetStream first, which is how a
  restarted publisher resumes ``seq`` and ``state``.

Whether JetStream checks the expected sequence or the message id first has
varied between server versions and between R1 and clustered streams, so both
outcomes are handled: after a refusal or a duplicate ack the stored message
is read back and compared with what we sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import msgspec
import nats.errors
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import (
    DiscardPolicy,
    PubAck,
    RawStreamMsg,
    RePublish,
    StorageType,
    StreamConfig,
)
from nats.js.errors import APIError, NotFoundError, ServiceUnavailableError

from scorecast.protocol import COMMITTED_PREFIX, STREAM_NAME, SUBJECT_PREFIX
from scorecast.protocol.envelope import (
    InvalidEnvelope,
    decode_envelope,
    encode_envelope,
    message_id,
)
from scorecast.protocol.merge_patch import apply_patch
from scorecast.protocol.topics import subject_for, topic_of
from scorecast.publishers.errors import (
    CorruptTopic,
    EnvelopeProblem,
    EnvelopeTooLarge,
    FeedError,
    FeedIdConflict,
    JetStreamUnavailable,
    StreamConfigError,
    TopicContended,
)
from scorecast.publishers.feed_ids import FeedIds, Original
from scorecast.publishers.settings import DUPLICATE_WINDOW

__all__ = ["DUPLICATE_WINDOW", "Published", "TopicPublisher", "ensure_stream"]

# room for what changes between the check and the publish (seq digits, ts)
_ENVELOPE_SLACK = 64


# JetStream API error codes (nats-server errors.json).
_STREAM_NAME_IN_USE = 10058
_STREAM_NOT_FOUND = 10059
_WRONG_LAST_SEQUENCE = (10071, 10164)  # JSStreamWrongLastSequence(Constant)Err

_MSG_ID = "Nats-Msg-Id"
_EXPECTED_LAST_SUBJECT_SEQUENCE = "Nats-Expected-Last-Subject-Sequence"


async def ensure_stream(
    js: JetStreamContext,
    *,
    history: int = 1000,
    replicas: int = 1,
    duplicate_window: float = DUPLICATE_WINDOW,
) -> None:
    """Create the SCORES stream, or bring an existing one to this configuration.

    ``duplicate_window`` is the contract's 2 minutes; tests shorten it
    (``--duplicate-window``) to show that feed ids outlive it.

    Only the settings of the contract are touched; anything else an operator
    set on the stream (allow_direct, placement, ...) is kept. Safe to call
    from several publishers at once: creating an existing stream with the
    same configuration succeeds, and losing the race to create it is retried
    as an update.
    """
    wanted: dict[str, Any] = {
        "subjects": [SUBJECT_PREFIX + ">"],
        "storage": StorageType.FILE,
        "discard": DiscardPolicy.OLD,
        "max_msgs_per_subject": history,
        "duplicate_window": duplicate_window,
        "num_replicas": replicas,
        # stored messages only, for gateways (see protocol.COMMITTED_PREFIX)
        "republish": RePublish(src=SUBJECT_PREFIX + ">", dest=COMMITTED_PREFIX + ">"),
    }
    try:
        for _ in range(3):
            try:
                info = await js.stream_info(STREAM_NAME)
            except NotFoundError:
                try:
                    await js.add_stream(StreamConfig(name=STREAM_NAME, **wanted))
                    return
                except APIError as exc:
                    if exc.err_code == _STREAM_NAME_IN_USE:
                        continue  # another publisher created it meanwhile: compare with theirs
                    raise
            current = info.config
            if any(_differs(getattr(current, key), value) for key, value in wanted.items()):
                await js.update_stream(current.evolve(**wanted))
            return
    except ServiceUnavailableError as exc:
        raise JetStreamUnavailable(f"JetStream unavailable: {exc}") from exc
    except APIError as exc:
        raise StreamConfigError(f"stream {STREAM_NAME}: {exc.description}") from exc
    except nats.errors.Error as exc:
        raise JetStreamUnavailable(f"NATS: {exc!r}") from exc
    raise StreamConfigError(f"stream {STREAM_NAME} kept changing while being set up")


def _differs(current: Any, wanted: Any) -> bool:
    if isinstance(wanted, RePublish):
        return current is None or (current.src, current.dest) != (wanted.src, wanted.dest)
    return current != wanted


@dataclass(frozen=True, slots=True)
class Published:
    """A topic's event as stored: the new ``seq``, its ``ts`` and full ``state``.

    ``duplicate`` is true when the event had been stored before (same feed id
    within the duplicate window); the fields then describe that stored event,
    or are ``seq`` 0, ``ts`` 0.0 and ``state`` None when it has since left the
    stream.
    """

    topic: str
    seq: int
    ts: float
    state: Any
    duplicate: bool = False


@dataclass(frozen=True, slots=True)
class _Head:
    """What this publisher knows of a topic's newest stored message."""

    seq: int
    ts: float
    state: Any
    stream_seq: int  # 0: the subject holds no message


_EMPTY = _Head(seq=0, ts=0.0, state=None, stream_seq=0)


class _WrongLastSequence(Exception):
    """JetStream refused the write: the topic moved on since we last read it."""


class TopicPublisher:
    """Publishes envelopes for any number of topics over one NATS connection.

    Publishes to one topic are serialised (one lock per topic); different
    topics proceed concurrently. ``timeout`` bounds each JetStream request;
    ``attempts`` bounds the re-reads after losing a race for a topic.
    """

    def __init__(
        self,
        nc: Client,
        *,
        timeout: float = 2.0,
        attempts: int = 40,
        stream: str = STREAM_NAME,
        feed_ids: FeedIds | None = None,
    ) -> None:
        self._nc = nc
        self._feed_ids = feed_ids
        self._js = nc.jetstream(timeout=timeout)
        self._stream = stream
        self._attempts = attempts
        self._heads: dict[str, _Head] = {}
        self._locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)

    @property
    def connected(self) -> bool:
        return self._nc.is_connected

    async def current(self, topic: str) -> Published | None:
        """The topic's newest event as this publisher knows it; None if it has none."""
        async with self._locks[topic]:
            head = await self._head(topic)
        if head.seq == 0:
            return None
        return Published(topic, head.seq, head.ts, head.state)

    async def publish(
        self,
        topic: str,
        kind: str,
        patch: Any,
        *,
        feed_id: str | None = None,
        ts: float | None = None,
    ) -> Published:
        """Store ``patch`` as the topic's next event; return it as stored.

        Raises :class:`~publishers.errors.JetStreamUnavailable` when NATS does
        not answer (retry later: with a ``feed_id`` the retry is stored once),
        ``TopicContended``, ``CorruptTopic``, ``FeedIdConflict`` and
        ``EnvelopeTooLarge`` (all in :mod:`publishers.errors`).
        """
        ts = time.time() if ts is None else ts
        async with self._locks[topic]:
            if feed_id and self._feed_ids is not None:
                original = await self._feed_ids.lookup(feed_id, topic)
                if original is not None:
                    return await self._repeat(topic, feed_id, original)
            published, stream_seq = await self._store(topic, kind, patch, feed_id, ts)
            if feed_id and self._feed_ids is not None and published.seq:
                await self._feed_ids.remember(
                    feed_id, Original(topic, published.seq, published.ts, stream_seq)
                )
            return published

    async def check(
        self, items: list[tuple[str, str, Any, str | None]]
    ) -> list[tuple[int, FeedError]]:
        """What would fail if ``items`` (topic, kind, patch, feed_id) were published
        now, in order, by index; empty when nothing would. Stores nothing.

        Catches what storing would find too late: a feed id that names an
        event of another topic, an envelope over the NATS max_payload, a patch
        that cannot be applied or encoded. Raises BackendError when NATS or a
        topic's stored head cannot be read.
        """
        problems: list[tuple[int, FeedError]] = []
        states: dict[str, Any] = {}
        ids: dict[str, str] = {}
        limit = self._nc.max_payload - _ENVELOPE_SLACK
        for index, (topic, kind, patch, feed_id) in enumerate(items):
            if feed_id:
                other = ids.setdefault(feed_id, topic)
                if other == topic and self._feed_ids is not None:
                    original = await self._feed_ids.lookup(feed_id, topic)
                    other = topic if original is None else original.topic
                if other != topic:
                    problems.append((index, FeedIdConflict(feed_id, topic, other)))
                    continue
            if topic not in states:
                async with self._locks[topic]:
                    states[topic] = (await self._head(topic)).state
            try:
                state = apply_patch(states[topic], patch)
                size = len(encode_envelope(topic, 1, time.time(), kind, patch, state))
            except (RecursionError, TypeError, ValueError) as exc:
                problems.append((index, EnvelopeProblem(topic, str(exc))))
                continue
            if size > limit:
                problems.append((index, EnvelopeTooLarge(topic, size)))
                continue
            states[topic] = state
        return problems

    async def _repeat(self, topic: str, feed_id: str, original: Original) -> Published:
        """The answer to an id stored before: a duplicate naming the original."""
        if original.topic != topic:
            raise FeedIdConflict(feed_id, topic, original.topic, original.seq)
        state = None
        stored = await self._get(original.stream_seq)
        if stored is not None and stored.subject == subject_for(topic):
            with contextlib.suppress(CorruptTopic):
                seq, _, stored_state = _decoded(topic, stored.data)
                state = stored_state if seq == original.seq else None
        return Published(topic, original.seq, original.ts, state, duplicate=True)

    async def _store(
        self, topic: str, kind: str, patch: Any, feed_id: str | None, ts: float
    ) -> tuple[Published, int]:
        """Publish under the topic's lock; the event as stored and its stream seq."""
        subject = subject_for(topic)
        try:
            head = await self._head(topic)
            for attempt in range(self._attempts):
                seq = head.seq + 1
                state = apply_patch(head.state, patch)
                body = encode_envelope(topic, seq, ts, kind, patch, state)
                headers = {
                    _MSG_ID: message_id(topic, seq, feed_id),
                    _EXPECTED_LAST_SUBJECT_SEQUENCE: str(head.stream_seq),
                }
                try:
                    ack = await self._send(subject, body, headers)
                except _WrongLastSequence:
                    stored = await self._last(subject)
                    head = self._remember(topic, stored)
                    if stored is not None and stored.data == body:
                        # ours, sent before a timeout
                        return Published(topic, seq, ts, state), head.stream_seq
                    if feed_id and stored is not None and _msg_id(stored) == feed_id:
                        duplicate = Published(topic, head.seq, head.ts, head.state, duplicate=True)
                        return duplicate, head.stream_seq
                    await _back_off(attempt)
                    continue
                sent = _Head(seq, ts, state, ack.seq)
                if not ack.duplicate:
                    self._heads[topic] = sent
                    return Published(topic, seq, ts, state), ack.seq
                published = await self._duplicate(topic, feed_id, sent, body)
                if published is not None:
                    return published, sent.stream_seq
                # Another publisher stored <topic>:<seq> first: read it and go on.
                head = self._remember(topic, await self._last(subject))
                await _back_off(attempt)
        except JetStreamUnavailable:
            self._heads.pop(topic, None)  # the outcome is unknown: re-read next time
            raise
        raise TopicContended(topic, self._attempts)

    async def _duplicate(
        self, topic: str, feed_id: str | None, sent: _Head, body: bytes
    ) -> Published | None:
        """JetStream already holds our message id at ``sent.stream_seq``: whose is it?

        None: someone else's event took the id ``<topic>:<seq>``; read and retry.
        """
        stored = await self._get(sent.stream_seq)
        if stored is not None and stored.data == body:  # ours, sent before a timeout
            if self._heads.get(topic, _EMPTY).stream_seq < sent.stream_seq:
                self._heads[topic] = sent
            return Published(topic, sent.seq, sent.ts, sent.state)
        if stored is not None and stored.subject != subject_for(topic):
            taken = feed_id or message_id(topic, sent.seq)
            raise FeedIdConflict(taken, topic, topic_of(stored.subject or ""))
        if not feed_id:
            return None  # the id <topic>:<seq> was taken by a racing publisher
        if stored is None:
            return Published(topic, 0, 0.0, None, duplicate=True)
        stored_seq, stored_ts, stored_state = _decoded(topic, stored.data)
        return Published(topic, stored_seq, stored_ts, stored_state, duplicate=True)

    async def _head(self, topic: str) -> _Head:
        head = self._heads.get(topic)
        if head is None:
            head = self._remember(topic, await self._last(subject_for(topic)))
        return head

    def _remember(self, topic: str, stored: RawStreamMsg | None) -> _Head:
        if stored is None:
            head = _EMPTY
        else:
            seq, ts, state = _decoded(topic, stored.data)
            head = _Head(seq, ts, state, stored.seq or 0)
        self._heads[topic] = head
        return head

    async def _send(self, subject: str, body: bytes, headers: dict[str, str]) -> PubAck:
        """One publish; a timeout is retried with the very same message."""
        for attempt in range(3):
            if not self._nc.is_connected:
                raise JetStreamUnavailable("not connected to NATS")
            try:
                return await self._js.publish(subject, body, headers=headers)
            except APIError as exc:
                if exc.err_code in _WRONG_LAST_SEQUENCE:
                    raise _WrongLastSequence from None
                raise JetStreamUnavailable(f"JetStream refused the publish: {exc}") from exc
            except nats.errors.MaxPayloadError:
                raise EnvelopeTooLarge(topic_of(subject), len(body)) from None
            except nats.errors.TimeoutError:
                if attempt == 2:
                    raise JetStreamUnavailable("JetStream did not acknowledge in time") from None
            except nats.errors.Error as exc:
                raise JetStreamUnavailable(f"NATS: {exc!r}") from exc
        raise AssertionError("unreachable")

    async def _last(self, subject: str) -> RawStreamMsg | None:
        """The subject's newest message, None when it has none."""
        return await self._read(subject=subject)

    async def _get(self, stream_seq: int) -> RawStreamMsg | None:
        """The message at a stream sequence, None when it is gone."""
        return await self._read(seq=stream_seq)

    async def _read(self, **where: Any) -> RawStreamMsg | None:
        if not self._nc.is_connected:
            raise JetStreamUnavailable("not connected to NATS")
        try:
            return await self._js.get_msg(self._stream, **where)
        except NotFoundError as exc:
            if exc.err_code == _STREAM_NOT_FOUND:
                raise JetStreamUnavailable(f"no stream {self._stream}") from exc
            return None  # 10037, or the 404 of a direct get: no such message
        except nats.errors.Error as exc:
            raise JetStreamUnavailable(f"NATS: {exc!r}") from exc


def _decoded(topic: str, body: bytes | None) -> tuple[int, float, Any]:
    try:
        envelope = decode_envelope(body or b"")
        state = msgspec.json.decode(envelope.state)
    except (InvalidEnvelope, msgspec.DecodeError) as exc:
        raise CorruptTopic(topic, str(exc)) from None
    return envelope.seq, envelope.ts, state


def _msg_id(stored: RawStreamMsg) -> str | None:
    return (stored.headers or {}).get(_MSG_ID)


async def _back_off(attempt: int) -> None:
    """Jittered, capped exponential pause, so a starved racer gets its turn."""
    await asyncio.sleep(random.uniform(0, min(0.05, 0.0005 * 2**attempt)))
