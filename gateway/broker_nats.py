"""The broker port on a real NATS cluster: live events of stored messages
only, JetStream reads for snapshots and gap repair.

Live events are followed on ``committed.scores.<topic>``, where the SCORES
stream republishes each message once it is stored: a publish that JetStream
refused (a duplicate, or the loser of a race on expected-last-subject-sequence)
is seen by plain ``scores.<topic>`` subscribers, never by these. A stream set
up without that republish (by a publisher that knows only PROTOCOL.md) is
detected, and the broker then follows each held topic with an ordered
JetStream consumer (``DeliverPolicy.NEW``): it delivers stored messages only,
at the cost of one consumer per held topic. The stream is re-checked every
few seconds and after every reconnect; subscriptions move when its
configuration changes, and a change of its identity (recreated: another
``created`` time, or its sequences going backwards) is a stream reset,
reported to ``on_stream_reset``.

nats-py runs a subscription's callback one message at a time; ours only
decodes and hands the bytes to the node, which fans out synchronously. The
pending limits are raised and ``error_cb`` is set so that a slow-consumer
drop is reported (the node then re-syncs the topic) instead of silent.
nats-py's own callbacks (reconnected, error) never await NATS: what they
trigger runs as a task of its own. Pings every second and three unanswered
pings make a frozen server visible (``connected`` false, ``/readyz`` 503)
within about four seconds instead of nats-py's default of minutes.

A stored message that is not a valid envelope is counted and skipped: a
poisoned head is never "no data yet"; the newest valid message is the
snapshot.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import nats
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import SlowConsumerError
from nats.js import JetStreamContext
from nats.js.api import DeliverPolicy, StreamInfo
from nats.js.errors import NotFoundError

from scorecast.gateway.broker import MessageHandler
from scorecast.gateway.stats import Stats
from scorecast.outage import OutageLog
from scorecast.protocol import COMMITTED_PREFIX, STREAM_NAME, SUBJECT_PREFIX
from scorecast.protocol.envelope import Envelope, InvalidEnvelope, decode_envelope
from scorecast.protocol.nats_auth import ANONYMOUS, NatsAuth
from scorecast.protocol.topics import subject_for

__all__ = ["NatsBroker", "PoisonedTopic"]

log = logging.getLogger("scorecast.nats")

STREAM_CHECK_INTERVAL = 2.0
PENDING_MSGS = 1_000_000
PENDING_BYTES = 512 * 1024 * 1024
# liveness: a server that answers no ping for ~4 s is stale (nats-py: 120 s, 2)
PING_INTERVAL = 1
MAX_OUTSTANDING_PINGS = 3

Callback = Callable[..., Awaitable[None] | None]


class PoisonedTopic(Exception):
    """A topic has stored messages, none of them a valid envelope."""


class NatsBroker:
    def __init__(
        self,
        servers: list[str],
        on_message: MessageHandler,
        *,
        on_resync: Callable[[str | None], Awaitable[None] | None] | None = None,
        on_stream_reset: Callable[[], Awaitable[None] | None] | None = None,
        stats: Stats | None = None,
        name: str = "scorecast-gateway",
        request_timeout: float = 5.0,
        auth: NatsAuth = ANONYMOUS,
    ) -> None:
        self.servers = servers
        self.auth = auth
        self.on_message = on_message
        self.on_resync = on_resync
        self.on_stream_reset = on_stream_reset
        self.stats = stats or Stats()
        self.name = name
        self.request_timeout = request_timeout
        self.nc: nats.NATS | None = None
        self.js: JetStreamContext | None = None
        self.subscriptions: dict[str, Any] = {}
        self.reconnects = 0
        self.stream_resets = 0
        # committed.scores. (republished: stored only) or scores. (then an
        # ordered JetStream consumer per topic, never a plain subscription)
        self.live_prefix = COMMITTED_PREFIX
        # what the stream was when last looked at: (created, first_seq, last_seq)
        self.stream_identity: tuple[Any, int, int] | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        # edges: a lost NATS is logged once, then a summary every 30 s
        self.outage = OutageLog(log, name, servers)

    def _client(self) -> nats.NATS:
        if self.nc is None:
            raise RuntimeError("not connected to NATS yet")
        return self.nc

    def _jetstream(self) -> JetStreamContext:
        if self.js is None:
            raise RuntimeError("not connected to NATS yet")
        return self.js

    @property
    def connected(self) -> bool:
        return self.nc is not None and self.nc.is_connected

    async def connect(self) -> None:
        self.nc = await nats.connect(
            servers=self.servers,
            name=self.name,
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.5,
            connect_timeout=2,
            allow_reconnect=True,
            ping_interval=PING_INTERVAL,
            max_outstanding_pings=MAX_OUTSTANDING_PINGS,
            disconnected_cb=self._disconnected,
            reconnected_cb=self._reconnected,
            error_cb=self._error,
            pending_size=64 * 1024 * 1024,
            **self.auth.options(),
        )
        self.js = self.nc.jetstream(timeout=self.request_timeout)
        await self._check_stream()
        self._watcher = asyncio.get_running_loop().create_task(self._watch_stream())

    async def close(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
        for task in list(self._tasks):
            task.cancel()
        if self.nc is not None and not self.nc.is_closed:
            await self.nc.close()

    # --- the stream: configuration and identity ---------------------------------

    async def _check_stream(self) -> bool:
        """Follow committed.scores.* when SCORES republishes there (or does not
        exist yet: our publishers create it so); True when that changed.
        Notices a reset stream on the way."""
        try:
            info = await self._jetstream().stream_info(STREAM_NAME)
        except NotFoundError:
            return False  # keep the identity: a stream that comes back is new
        self._note_identity(info)
        republish = info.config.republish
        committed = republish is not None and republish.dest == COMMITTED_PREFIX + ">"
        prefix = COMMITTED_PREFIX if committed else SUBJECT_PREFIX
        if prefix == self.live_prefix:
            return False
        if committed:
            log.warning("SCORES stream: following %s* for live events", prefix)
        else:
            log.warning(
                "SCORES stream has no republish to %s>: following stored messages "
                "with one JetStream consumer per topic",
                COMMITTED_PREFIX,
            )
        self.live_prefix = prefix
        return True

    def _note_identity(self, info: StreamInfo) -> None:
        identity = (info.created, info.state.first_seq, info.state.last_seq)
        before, self.stream_identity = self.stream_identity, identity
        if before is None:
            return
        if identity[0] == before[0] and identity[1] >= before[1] and identity[2] >= before[2]:
            return
        self.stream_resets += 1
        self.stats.stream_resets += 1
        log.warning(
            "SCORES stream was reset (created %s, first seq %s, last seq %s; "
            "was created %s, first %s, last %s): every held topic re-syncs",
            *identity,
            *before,
        )
        if self.on_stream_reset is not None:
            self._schedule(self.on_stream_reset())
        elif self.on_resync is not None:
            self._schedule(self.on_resync(None))

    async def _watch_stream(self) -> None:
        while True:
            await asyncio.sleep(STREAM_CHECK_INTERVAL)
            try:
                changed = await self._check_stream()
                if changed:
                    await self._move_subscriptions()
            except Exception as exc:
                log.debug("stream check failed: %r", exc)
                continue

    async def _move_subscriptions(self) -> None:
        for topic in list(self.subscriptions):
            old = self.subscriptions.pop(topic)
            await self.subscribe(topic)
            await _unsubscribe(old, topic)
        if self.on_resync is not None:
            self._schedule(self.on_resync(None))

    # --- live -----------------------------------------------------------------

    async def subscribe(self, topic: str) -> None:
        if topic in self.subscriptions:
            return
        deliver = self.on_message

        async def callback(msg: Msg) -> None:
            deliver(topic, msg.data)

        if self.live_prefix == COMMITTED_PREFIX:
            subscription = await self._client().subscribe(
                COMMITTED_PREFIX + topic,
                cb=callback,
                pending_msgs_limit=PENDING_MSGS,
                pending_bytes_limit=PENDING_BYTES,
            )
        else:  # no republish rule: a consumer delivers what the stream stored, only that
            subscription = await self._jetstream().subscribe(
                subject_for(topic),
                stream=STREAM_NAME,
                cb=callback,
                ordered_consumer=True,
                deliver_policy=DeliverPolicy.NEW,
                pending_msgs_limit=PENDING_MSGS,
                pending_bytes_limit=PENDING_BYTES,
            )
        self.subscriptions[topic] = subscription

    async def unsubscribe(self, topic: str) -> None:
        subscription = self.subscriptions.pop(topic, None)
        if subscription is not None and not self._client().is_closed:
            await _unsubscribe(subscription, topic)

    # --- stored ---------------------------------------------------------------

    async def latest(self, topic: str) -> Envelope | None:
        """The newest valid stored envelope of ``topic``; None when it has no
        message at all. An invalid head is skipped (counted, logged): the
        snapshot is the newest valid message before it."""
        try:
            raw = await self._jetstream().get_last_msg(STREAM_NAME, subject_for(topic))
        except NotFoundError:
            return None  # no data yet, or no stream yet (publishers create it)
        envelope = _valid(raw.data or b"", topic)
        if envelope is not None:
            return envelope
        log.warning(
            "the newest message of %s (stream seq %s) is not a valid envelope: "
            "serving the newest valid one",
            topic,
            raw.seq,
        )
        stored = await self.fetch(topic, 1, None)  # bounded by the stream's history depth
        if stored:
            return stored[-1]
        raise PoisonedTopic(f"{topic} has stored messages but none is a valid envelope")

    async def fetch(self, topic: str, first: int, last: int | None) -> list[Envelope]:
        """Read the topic's stored messages with an ephemeral ordered consumer;
        invalid ones are counted and skipped."""
        try:
            subscription = await self._jetstream().subscribe(
                subject_for(topic),
                stream=STREAM_NAME,
                ordered_consumer=True,
                deliver_policy=DeliverPolicy.ALL,
                inactive_threshold=30.0,
            )
        except NotFoundError:
            return []
        found: list[Envelope] = []
        try:
            while True:
                try:
                    msg = await subscription.next_msg(timeout=self.request_timeout)
                except nats.errors.TimeoutError:
                    break
                envelope = _valid(msg.data, topic)
                if envelope is None:
                    self.stats.invalid_envelopes += 1
                    log.warning(
                        "skipped a stored message of %s that is not a valid envelope "
                        "(stream seq %s)",
                        topic,
                        msg.metadata.sequence.stream,
                    )
                elif envelope.seq >= first:
                    if last is not None and envelope.seq > last:
                        break
                    found.append(envelope)
                if msg.metadata.num_pending == 0:
                    break
        finally:
            await subscription.unsubscribe()
        return found

    # --- connection events: nats-py's callbacks only schedule work ------------

    async def _disconnected(self) -> None:
        log.warning("nats disconnected")

    async def _reconnected(self) -> None:
        self.reconnects += 1
        self.outage.recovered()
        url = self._client().connected_url
        log.warning("nats reconnected to %s", url.netloc if url is not None else "?")
        if self.on_resync is not None:
            self._schedule(self.on_resync(None))
        self._schedule(self._check_after_reconnect())

    async def _check_after_reconnect(self) -> None:
        """The server we came back to may hold another SCORES (restored, recreated)."""
        try:
            if await self._check_stream():
                await self._move_subscriptions()
        except Exception as exc:
            log.debug("stream check after reconnect failed: %r", exc)

    async def _error(self, error: Exception) -> None:
        if isinstance(error, SlowConsumerError) and self.on_resync is not None:
            subject = error.subject or ""
            topic = subject.removeprefix(COMMITTED_PREFIX).removeprefix(SUBJECT_PREFIX)
            log.warning("nats slow consumer on %s: re-syncing", subject)
            self._schedule(self.on_resync(topic if topic in self.subscriptions else None))
            return
        if isinstance(error, OSError | TimeoutError):  # edges: reconnect attempts
            self.outage.failed(error)
            return
        log.warning("nats error: %r", error)

    def _schedule(self, result: Awaitable[None] | None) -> None:
        """Run what a callback returned as a task of its own (never awaited
        inside nats-py's reading loop)."""
        if not asyncio.iscoroutine(result):
            return
        task = asyncio.get_running_loop().create_task(result)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(_finished)


def _finished(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning("a re-sync after a NATS event failed: %r", task.exception())


async def _unsubscribe(subscription: Subscription, topic: str) -> None:
    try:
        await subscription.unsubscribe()
    except nats.errors.Error:
        log.debug("unsubscribe of %s failed", topic, exc_info=True)


def _valid(body: bytes, topic: str) -> Envelope | None:
    """The envelope in ``body`` if it is one, and of ``topic``; else None."""
    try:
        envelope = decode_envelope(body)
    except InvalidEnvelope:
        return None
    return envelope if envelope.topic == topic else None
