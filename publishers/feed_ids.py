"""Durable feed ids (PROTOCOL.md section 2): which feed ids were stored, and as what.

JetStream's ``Nats-Msg-Id`` de-duplication lasts the stream's duplicate
window (2 minutes). Beyond it, the JetStream key-value bucket
``SCORECAST_FEED_IDS`` remembers every stored feed id for ``ttl`` (48 hours
by default): key ``<128 bits of the id's sha256, base64url>``, value
``{"topic", "seq", "ts", "stream_seq"}`` of the event it was stored as.

How :class:`publishers.stream.TopicPublisher` uses it, and why in this order:

1. before publishing an item with an id, :meth:`FeedIds.lookup`: a hit is
   the answer (a duplicate, or a conflict when the topic differs);
2. publish to SCORES with ``Nats-Msg-Id`` = the id;
3. after JetStream stored it (or answered that it holds it already),
   :meth:`FeedIds.remember` with create-only semantics (the key's expected
   last sequence is 0).

The bucket forgets an id after ``ttl``; the stream may keep the event
longer (a topic keeps its newest ``history`` messages however old). For
those, :meth:`FeedIds.lookup` also reads the ``Nats-Msg-Id`` headers of the
topic's stored messages older than the TTL: one read per topic (its oldest
message) tells whether it has any, and only such topics are scanned, once,
then followed incrementally at most once a minute. Together: an id is found
for as long as its event is in the stream, and for ``ttl`` at least.

Two publishers racing with the same id both miss in step 1, and JetStream's
own de-duplication settles step 2 (one stored, the other acked as a
duplicate); step 3 is then idempotent. A crash between 2 and 3 leaves the id
unremembered: a retry within the duplicate window is a JetStream duplicate,
and its ack makes step 3 happen then. Only a crash in that gap followed by a
retry more than the window later could store the item twice; see
docs/FEEDS.md. Reserving the id before publishing would close that gap but
open a worse one: a crash after the reservation would make the event
unpublishable, a lost goal instead of a repeated one.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass, field

import msgspec
import nats.errors
import nats.js.errors
from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, StorageType
from nats.js.errors import APIError, NotFoundError, ServiceUnavailableError
from nats.js.kv import KeyValue

from scorecast.protocol import STREAM_NAME
from scorecast.protocol.envelope import InvalidEnvelope, decode_envelope, message_id
from scorecast.protocol.topics import subject_for
from scorecast.publishers.errors import JetStreamUnavailable, StreamConfigError
from scorecast.publishers.settings import FEED_ID_TTL

__all__ = ["BUCKET", "FEED_ID_TTL", "FeedIds", "Original"]

log = logging.getLogger(__name__)

BUCKET = "SCORECAST_FEED_IDS"
_MARGIN = 600.0  # seconds: messages this close to the TTL count as old already
_RESCAN = 60.0  # seconds between two incremental scans of one topic
_TOPICS_KEPT = 10_000  # topics whose old ids are cached (LRU)


@dataclass(slots=True)
class _OldIds:
    """Feed ids of a topic's messages older than the TTL, scanned so far."""

    ids: dict[str, Original] = field(default_factory=dict)
    next_seq: int = 1  # stream seq to scan from
    scanned_at: float = 0.0


class Original(msgspec.Struct, frozen=True):
    """The event a feed id was first stored as."""

    topic: str
    seq: int
    ts: float
    stream_seq: int


_decoder = msgspec.json.Decoder(Original)


def key_for(feed_id: str) -> str:
    """A bucket key for any feed id (ids may hold spaces and other characters
    that KV keys cannot): 128 bits of its SHA-256, 22 characters. Short keys
    keep nats-server's per-subject index small; a collision needs ~2**64 ids."""
    digest = hashlib.sha256(feed_id.encode()).digest()[:16]
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


@dataclass(slots=True)
class FeedIds:
    """The ``SCORECAST_FEED_IDS`` bucket, as publishers use it, and the ids of
    stored events older than its TTL."""

    kv: KeyValue
    ttl: float
    js: JetStreamContext | None = None
    stream: str = STREAM_NAME
    _old: OrderedDict[str, _OldIds] = field(default_factory=OrderedDict)

    @classmethod
    async def open(
        cls, js: JetStreamContext, *, replicas: int = 1, ttl: float | None = None
    ) -> FeedIds:
        """The bucket, created when missing; its TTL brought to ``ttl`` (48 h
        by default: every publisher should run with the same)."""
        ttl = FEED_ID_TTL if ttl is None else ttl
        if ttl < FEED_ID_TTL:
            log.warning("feed ids remembered for %g s only, under the contract's 48 h", ttl)
        try:
            try:
                kv = await js.key_value(BUCKET)
            except nats.js.errors.BucketNotFoundError:
                try:
                    kv = await js.create_key_value(
                        KeyValueConfig(
                            bucket=BUCKET,
                            history=1,
                            ttl=ttl,
                            storage=StorageType.FILE,
                            replicas=replicas,
                            direct=True,
                        )
                    )
                except APIError as exc:
                    if exc.err_code != 10058:  # created by another publisher meanwhile
                        raise
                    kv = await js.key_value(BUCKET)
                return cls(kv, ttl, js)
            info = await js.stream_info(f"KV_{BUCKET}")
            if info.config.max_age != ttl:
                await js.update_stream(info.config.evolve(max_age=ttl))
            return cls(kv, ttl, js)
        except ServiceUnavailableError as exc:
            raise JetStreamUnavailable(f"JetStream unavailable: {exc}") from exc
        except APIError as exc:
            raise StreamConfigError(f"bucket {BUCKET}: {exc.description}") from exc
        except nats.errors.Error as exc:
            raise JetStreamUnavailable(f"NATS: {exc!r}") from exc

    async def lookup(self, feed_id: str, topic: str | None = None) -> Original | None:
        """What ``feed_id`` was stored as; None when it was not, or so long
        ago that neither the bucket nor the stream (``topic``'s messages, when
        given) holds it any more."""
        try:
            entry = await self.kv.get(key_for(feed_id))
        except (nats.js.errors.KeyNotFoundError, NotFoundError):
            entry = None
        except nats.errors.Error as exc:
            raise JetStreamUnavailable(f"reading feed ids: {exc!r}") from exc
        if entry is not None:
            try:
                return _decoder.decode(entry.value or b"")
            except msgspec.DecodeError:
                log.warning("feed id bucket: unreadable entry for %r; ignored", feed_id)
        if topic is None or self.js is None:
            return None
        return (await self._old_ids(topic)).get(feed_id)

    async def _old_ids(self, topic: str) -> dict[str, Original]:
        """The ids of ``topic``'s stored messages older than the TTL (cached)."""
        old = self._old.get(topic)
        now = time.time()
        if old is None:
            old = self._old[topic] = _OldIds()
            while len(self._old) > _TOPICS_KEPT:
                self._old.popitem(last=False)
        else:
            self._old.move_to_end(topic)
            if now - old.scanned_at < _RESCAN:
                return old.ids
        old.scanned_at = now
        cutoff = now - self.ttl + min(_MARGIN, self.ttl / 10)
        subject = subject_for(topic)
        assert self.js is not None
        while True:
            try:
                msg = await self.js.get_msg(
                    self.stream, seq=old.next_seq, subject=subject, next=True
                )
            except NotFoundError:
                return old.ids  # no more messages of the topic
            except nats.errors.Error as exc:
                raise JetStreamUnavailable(f"reading {topic}: {exc!r}") from exc
            try:
                envelope = decode_envelope(msg.data or b"")
            except InvalidEnvelope:
                old.next_seq = (msg.seq or old.next_seq) + 1
                continue
            if envelope.ts >= cutoff:
                return old.ids  # this one and the later ones are in the bucket
            feed_id = (msg.headers or {}).get("Nats-Msg-Id")
            if feed_id and feed_id != message_id(topic, envelope.seq):
                old.ids[feed_id] = Original(topic, envelope.seq, envelope.ts, msg.seq or 0)
            old.next_seq = (msg.seq or old.next_seq) + 1

    async def remember(self, feed_id: str, original: Original) -> Original:
        """Record ``feed_id`` as ``original`` unless it is recorded already;
        return what the bucket holds for it."""
        key = key_for(feed_id)
        try:
            await self.kv.create(key, msgspec.json.encode(original))
            return original
        except nats.js.errors.KeyWrongLastSequenceError:
            held = await self.lookup(feed_id)
            if held is not None and (held.topic, held.seq) != (original.topic, original.seq):
                log.warning(
                    "feed id %r: recorded as %s:%d, stored again as %s:%d",
                    feed_id,
                    held.topic,
                    held.seq,
                    original.topic,
                    original.seq,
                )
            return held or original
        except nats.errors.Error as exc:
            raise JetStreamUnavailable(f"recording feed id: {exc!r}") from exc
