"""The broker port on a real NATS cluster: core subscriptions for live events,
JetStream reads for snapshots and gap repair.

Live events are followed on ``committed.scores.<topic>``, where the SCORES
stream republishes each message once it is stored: a publish that JetStream
refused (the loser of a race on expected-last-subject-sequence) is seen by
plain ``scores.<topic>`` subscribers, never by these. A stream set up without
that republish (by a publisher that knows only PROTOCOL.md) is detected, and
the broker then follows ``scores.<topic>`` instead; it re-checks every few
seconds and moves every subscription when the stream changes.

nats-py runs a subscription's callback one message at a time; ours only
decodes and hands the bytes to the node, which fans out synchronously. The
pending limits are raised and ``error_cb`` is set so that a slow-consumer
drop is reported (the node then re-syncs the topic) instead of silent.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import nats
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import SlowConsumerError
from nats.js.api import DeliverPolicy
from nats.js.errors import NotFoundError

from gateway.broker import MessageHandler
from protocol import COMMITTED_PREFIX, STREAM_NAME, SUBJECT_PREFIX
from protocol.envelope import Envelope, InvalidEnvelope, decode_envelope
from protocol.topics import subject_for

__all__ = ["NatsBroker"]

log = logging.getLogger("scorecast.nats")

STREAM_CHECK_INTERVAL = 5.0
PENDING_MSGS = 1_000_000
PENDING_BYTES = 512 * 1024 * 1024


class NatsBroker:
    def __init__(
        self,
        servers: list[str],
        on_message: MessageHandler,
        *,
        on_resync: Callable[[str | None], Awaitable[None] | None] | None = None,
        on_stream_reset: Callable[[], None] | None = None,
        name: str = "scorecast-gateway",
        request_timeout: float = 5.0,
    ) -> None:
        self.servers = servers
        self.on_message = on_message
        self.on_resync = on_resync
        self.on_stream_reset = on_stream_reset
        self.name = name
        self.request_timeout = request_timeout
        self.nc: nats.NATS | None = None
        self.js = None
        self.subscriptions: dict[str, Subscription] = {}
        self.reconnects = 0
        self.live_prefix = COMMITTED_PREFIX
        self._watcher: asyncio.Task[None] | None = None

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
            disconnected_cb=self._disconnected,
            reconnected_cb=self._reconnected,
            error_cb=self._error,
            pending_size=64 * 1024 * 1024,
        )
        self.js = self.nc.jetstream(timeout=self.request_timeout)
        await self._check_stream()
        self._watcher = asyncio.get_running_loop().create_task(self._watch_stream())

    async def close(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
        if self.nc is not None and not self.nc.is_closed:
            await self.nc.close()

    async def _check_stream(self) -> bool:
        """Follow committed.scores.* when SCORES republishes there (or does not
        exist yet: our publishers create it so); True when that changed."""
        try:
            config = (await self.js.stream_info(STREAM_NAME)).config
        except NotFoundError:
            return False
        republish = config.republish
        committed = republish is not None and republish.dest == COMMITTED_PREFIX + ">"
        prefix = COMMITTED_PREFIX if committed else SUBJECT_PREFIX
        if prefix == self.live_prefix:
            return False
        log.warning("SCORES stream: following %s* for live events", prefix)
        self.live_prefix = prefix
        return True

    async def _watch_stream(self) -> None:
        while True:
            await asyncio.sleep(STREAM_CHECK_INTERVAL)
            try:
                changed = await self._check_stream()
            except Exception as exc:
                log.debug("stream check failed: %r", exc)
                continue
            if changed:
                for topic in list(self.subscriptions):
                    old = self.subscriptions.pop(topic)
                    await self.subscribe(topic)
                    await old.unsubscribe()
                if self.on_resync is not None:
                    await _maybe_await(self.on_resync(None))

    # --- live -----------------------------------------------------------------

    async def subscribe(self, topic: str) -> None:
        if topic in self.subscriptions:
            return
        deliver = self.on_message

        async def callback(msg: Msg) -> None:
            deliver(topic, msg.data)

        self.subscriptions[topic] = await self.nc.subscribe(
            self.live_prefix + topic,
            cb=callback,
            pending_msgs_limit=PENDING_MSGS,
            pending_bytes_limit=PENDING_BYTES,
        )

    async def unsubscribe(self, topic: str) -> None:
        subscription = self.subscriptions.pop(topic, None)
        if subscription is not None and not self.nc.is_closed:
            try:
                await subscription.unsubscribe()
            except nats.errors.Error:
                log.debug("unsubscribe of %s failed", topic, exc_info=True)

    # --- stored ---------------------------------------------------------------

    async def latest(self, topic: str) -> Envelope | None:
        try:
            raw = await self.js.get_last_msg(STREAM_NAME, subject_for(topic))
        except NotFoundError:
            return None  # no data yet, or no stream yet (publishers create it)
        return _decode(raw.data)

    async def fetch(self, topic: str, first: int, last: int | None) -> list[Envelope]:
        """Read the topic's stored messages with an ephemeral ordered consumer."""
        try:
            subscription = await self.js.subscribe(
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
                envelope = _decode(msg.data)
                if envelope is not None and envelope.seq >= first:
                    if last is not None and envelope.seq > last:
                        break
                    found.append(envelope)
                if msg.metadata.num_pending == 0:
                    break
        finally:
            await subscription.unsubscribe()
        return found

    # --- connection events --------------------------------------------------

    async def _disconnected(self) -> None:
        log.warning("nats disconnected")

    async def _reconnected(self) -> None:
        self.reconnects += 1
        log.warning("nats reconnected to %s", self.nc.connected_url.netloc)
        if self.on_resync is not None:
            await _maybe_await(self.on_resync(None))

    async def _error(self, error: Exception) -> None:
        if isinstance(error, SlowConsumerError) and self.on_resync is not None:
            log.warning("nats slow consumer on %s: re-syncing", error.subject)
            await _maybe_await(self.on_resync(error.subject.removeprefix(self.live_prefix)))
            return
        log.warning("nats error: %r", error)


def _decode(body: bytes) -> Envelope | None:
    try:
        return decode_envelope(body)
    except InvalidEnvelope as exc:
        log.warning("dropped a message that is not an envelope: %s", exc)
        return None


async def _maybe_await(result: Awaitable[None] | None) -> None:
    if asyncio.iscoroutine(result):
        await result
