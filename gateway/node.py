"""One gateway node: the hub, the broker and the client connections, glued on
one event loop.

Fan-out is synchronous: a live message is decoded and checked once by its
:class:`~gateway.topic.Topic`, encoded once into frame bytes, and appended to
each subscriber's outbox. One callback per loop tick (or per ``coalesce``
window) writes everything each connection is owed in a single
``transport.write``. No task, queue or future per message per client.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

from gateway.auth import TokenVerifier
from gateway.hub import Hub
from gateway.outbox import SlowClientPolicy, Verdict
from gateway.settings import GatewaySettings
from gateway.stats import Stats
from gateway.topic import Gap, Topic
from protocol.codec import encode, error_payload, text_frame
from protocol.envelope import Envelope, InvalidEnvelope, decode_envelope
from protocol.errors import ClientError, CloseCode, Forbidden, TooManyTopics, Unauthorized
from protocol.messages import (
    Auth,
    Authed,
    Reconnect,
    Subscribe,
    Subscribed,
    Unsubscribe,
    Unsubscribed,
)

if TYPE_CHECKING:
    from gateway.broker import Broker
    from gateway.connection import Client

__all__ = ["Node"]

log = logging.getLogger("scorecast.node")

SWEEP_INTERVAL = 0.05
RECONNECT_JITTER_MS = 1000
BACKFILL_REUSE = 5.0  # seconds a JetStream read serves later recoveries of its topic
RETRY_DELAY = 0.5


class Node:
    def __init__(self, settings: GatewaySettings, stats: Stats | None = None) -> None:
        self.settings = settings
        self.stats = stats or Stats()
        self.hub = Hub(settings.history)
        self.policy = SlowClientPolicy(
            settings.soft_limit, settings.hard_limit, settings.slow_grace
        )
        self.broker: Broker | None = None
        self.clients: set[Client] = set()
        self.draining = False
        self._dirty: list[Client] = []
        self._flush_scheduled = False
        self._slow: set[Client] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._backfills: dict[str, asyncio.Task[list[Envelope]]] = {}
        # topic -> (the Topic read for, reusable until, stored envelopes by seq)
        self._recent_backfills: dict[str, tuple[Topic, float, dict[int, Envelope]]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self.verifier: TokenVerifier | None = None
        if settings.jwt_secret or settings.jwt_public_key:
            self.verifier = TokenVerifier(
                secret=settings.jwt_secret, public_key_file=settings.jwt_public_key
            )

    @property
    def ready(self) -> bool:
        return self.broker is not None and self.broker.connected and not self.draining

    def start(self, broker: Broker) -> None:
        self.broker = broker
        self._loop = asyncio.get_running_loop()
        self._sweeper = self._loop.create_task(self._sweep_slow())

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        for task in list(self._tasks):
            task.cancel()

    # --- writing --------------------------------------------------------------

    def send(self, client: Client, frame: bytes) -> None:
        if client.outbox.push(frame):
            self._dirty.append(client)
            self._schedule_flush()

    def send_error(self, client: Client, error: ClientError) -> None:
        self.stats.errors_sent += 1
        self.send(client, text_frame(error_payload(error)))

    def _fan_out(self, topic: Topic, frame: bytes) -> None:
        """Append one encoded frame to every subscriber's outbox (the hot loop:
        Outbox.push is inlined)."""
        dirty = self._dirty
        for client in topic.subscribers:
            outbox = client.outbox
            if outbox.slow_since is None:
                frames = outbox.frames
                frames.append(frame)
                if len(frames) == 1:
                    dirty.append(client)
            else:
                outbox.conflated.add(topic.name)
        self.stats.fanouts += 1
        self.stats.deliveries += len(topic.subscribers)
        self._schedule_flush()

    def _schedule_flush(self) -> None:
        if self._flush_scheduled or not self._dirty:
            return
        self._flush_scheduled = True
        if self.settings.coalesce > 0:
            self._loop.call_later(self.settings.coalesce, self._flush)
        else:
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        """One write per connection with everything it is owed; then the
        slow-client policy where a socket did not take it all."""
        self._flush_scheduled = False
        dirty, self._dirty = self._dirty, []
        now = time.monotonic()
        # below both limits the policy has nothing to say: skip asking it
        quiet = min(self.settings.soft_limit, self.settings.hard_limit)
        written = 0
        for client in dirty:
            outbox = client.outbox
            data = outbox.take()
            if not data or client.closed:
                continue
            client.write(data)
            written += len(data)
            if outbox.slow_since is not None or client.unsent() > quiet:
                self._judge(client, now)
        self.stats.writes += len(dirty)
        self.stats.bytes_out += written

    def _judge(self, client: Client, now: float) -> None:
        verdict = self.policy.judge(client.outbox, client.unsent(), now)
        if verdict is Verdict.OK:
            return
        if verdict is Verdict.CONFLATE:
            self.stats.slow_clients += 1
            self._slow.add(client)
        elif verdict is Verdict.RESUME:
            self._slow.discard(client)
            self._resume(client)
        else:
            self._slow.discard(client)
            self.stats.slow_closes += 1
            client.close(CloseCode.SLOW_CONSUMER, "slow consumer")

    def _resume(self, client: Client) -> None:
        """A conflating client drained: each skipped topic's newest snapshot."""
        conflated, client.outbox.conflated = client.outbox.conflated, set()
        for name in conflated:
            topic = self.hub.topic(name)
            if topic is not None and client in topic.subscribers:
                self.stats.conflations += 1
                self.send(client, topic.snapshot_frame())

    def figures(self) -> dict:
        """Counters and gauges of this node, for ``/metrics``."""
        figures = self.stats.snapshot()
        figures.update(
            connections=len(self.clients),
            subscriptions=sum(len(names) for names in self.hub.by_connection.values()),
            topics=len(self.hub.topics),
            slow_connections=len(self._slow),
            nats_connected=int(self.broker is not None and self.broker.connected),
            nats_reconnects=getattr(self.broker, "reconnects", 0),
        )
        return figures

    async def _sweep_slow(self) -> None:
        """Re-judge conflating clients; measure event-loop lag on the way."""
        while True:
            started = time.monotonic()
            await asyncio.sleep(SWEEP_INTERVAL)
            now = time.monotonic()
            self.stats.loop_lag_seconds = max(0.0, now - started - SWEEP_INTERVAL)
            for client in list(self._slow):
                if client.closed:
                    self._slow.discard(client)
                else:
                    self._judge(client, now)

    # --- clients --------------------------------------------------------------

    def connect(self, client: Client) -> None:
        self.clients.add(client)
        self.stats.connections_opened += 1
        self._watch_expiry(client)

    def disconnect(self, client: Client) -> None:
        if client.expiry is not None:
            client.expiry.cancel()
        self.clients.discard(client)
        self._slow.discard(client)
        client.waiting.clear()
        for name in self.hub.detach_all(client):
            self._spawn(self.broker.unsubscribe(name))
        self.stats.connections_closed += 1

    def subscribe(self, client: Client, request: Subscribe) -> None:
        """Answer ``subscribed``, then a snapshot or a replay per topic.

        Topics the token does not allow each get a ``forbidden`` error; the
        others go through. A request over the per-connection limit is refused
        whole."""
        allowed = [name for name in request.topics if client.grant.allows(name)]
        new = sum(1 for name in allowed if not self.hub.holds(client, name))
        limit = self.settings.max_topics_per_connection
        if limit is not None and self.hub.topic_count(client) + new > limit:
            raise TooManyTopics(f"at most {limit} topics per connection", request.id)
        for name in request.topics:
            if name not in allowed:
                self.send_error(client, Forbidden(f"not allowed: {name}", request.id))
        if not allowed:
            return
        self.send(client, text_frame(encode(Subscribed(id=request.id, topics=allowed))))
        since = request.since or {}
        for name in allowed:
            topic, created = self.hub.attach(client, name)
            topic.subscribers.discard(client)  # subscribing again restarts the topic
            client.outbox.conflated.discard(name)
            client.waiting[name] = since.get(name)
            if created:
                self._spawn(self._load(topic))
            elif topic.ready:
                self._start(client, topic)

    def unsubscribe(self, client: Client, request: Unsubscribe) -> None:
        for name in request.topics:
            client.waiting.pop(name, None)
            client.outbox.conflated.discard(name)
            if self.hub.detach(client, name):
                self._spawn(self.broker.unsubscribe(name))
        self.send(client, text_frame(encode(Unsubscribed(id=request.id, topics=request.topics))))

    def authenticate(self, client: Client, request: Auth) -> None:
        """Refresh the token: a new ``exp`` (and topics) for this connection."""
        if self.verifier is None:
            raise Unauthorized("this gateway does not use tokens", request.id)
        client.grant = self.verifier.verify(request.token, request.id)
        self._watch_expiry(client)
        self.send(client, text_frame(encode(Authed(id=request.id, exp=client.grant.exp))))

    def _watch_expiry(self, client: Client) -> None:
        if client.expiry is not None:
            client.expiry.cancel()
        if self.verifier is not None and client.grant.exp:
            delay = max(0.0, client.grant.exp - time.time())
            client.expiry = self._loop.call_later(delay, self._expire, client)

    def _expire(self, client: Client) -> None:
        if client.grant.exp <= time.time():
            client.close(CloseCode.TOKEN_EXPIRED, "token expired")
        else:
            self._watch_expiry(client)

    # --- drain ------------------------------------------------------------------

    async def drain(self) -> None:
        """Hint every client to reconnect elsewhere, spread over the window,
        closing each with 1012 at its turn; return when all are gone or the
        deadline passes."""
        self.draining = True
        window = self.settings.drain_window
        for client in list(self.clients):
            self._loop.call_later(random.uniform(0, window), self._send_away, client)
        deadline = time.monotonic() + self.settings.drain_deadline
        while self.clients and time.monotonic() < deadline:
            await asyncio.sleep(0.05)

    def _send_away(self, client: Client) -> None:
        if client.closed:
            return
        hint = Reconnect(after_ms=random.randint(0, RECONNECT_JITTER_MS), reason="draining")
        self.send(client, text_frame(encode(hint)))
        client.close(CloseCode.RESTART, "restart")

    def _start(self, client: Client, topic: Topic) -> None:
        """First delivery of a ready topic: snapshot, or replay after ``since``."""
        since = client.waiting.pop(topic.name)
        if since is not None:
            frames = topic.frames_since(since)
            if frames is not None:
                self.stats.recoveries_memory += 1
                for frame in frames:
                    self.send(client, frame)
                topic.subscribers.add(client)
                return
            if since < topic.seq:
                client.waiting[topic.name] = since
                self._backfill(topic)
                return
        self.send(client, topic.snapshot_frame())
        topic.subscribers.add(client)

    # --- topics ---------------------------------------------------------------

    async def _load(self, topic: Topic) -> None:
        """First subscriber here: subscribe live, then read the snapshot."""
        name = topic.name
        attempts = 0
        while self.hub.topic(name) is topic:
            try:
                await self.broker.subscribe(name)
                latest = await self.broker.latest(name)
                break
            except Exception as exc:  # NATS down or timing out: keep clients waiting
                # one line per topic per outage, not one per retry
                level = logging.WARNING if attempts == 0 else logging.DEBUG
                log.log(level, "loading %s failed (%r); retrying", name, exc)
                attempts += 1
                await asyncio.sleep(RETRY_DELAY)
        else:
            if self.hub.topic(name) is None:
                await self.broker.unsubscribe(name)
            return
        self.stats.snapshots_loaded += 1
        held = topic.take_held()
        topic.reset(latest)
        self._release(topic, held)
        for client in list(topic.holders):
            if name in client.waiting:
                self._start(client, topic)

    def on_message(self, name: str, body: bytes) -> None:
        """A live message from NATS, in the subscription's order."""
        self.stats.messages_in += 1
        topic = self.hub.topic(name)
        if topic is None:
            return
        try:
            envelope = decode_envelope(body)
        except InvalidEnvelope as exc:
            self.stats.invalid_envelopes += 1
            log.warning("dropped an invalid envelope on %s: %s", name, exc)
            return
        if envelope.topic != name:
            self.stats.invalid_envelopes += 1
            return
        self._offer(topic, envelope)

    def _offer(self, topic: Topic, envelope: Envelope) -> None:
        result = topic.offer(envelope)
        if result is None:
            return
        if isinstance(result, Gap):
            self.stats.gaps_detected += 1
            self._spawn(self._repair(topic, result))
        else:
            self._fan_out(topic, result)
            self.stats.observe_latency(envelope.ts)

    def _release(self, topic: Topic, repaired: list[Envelope]) -> None:
        frames, gap = topic.release(repaired)
        for frame in frames:
            self._fan_out(topic, frame)
        if gap is not None:
            self._spawn(self._repair(topic, gap))

    async def _repair(self, topic: Topic, gap: Gap) -> None:
        """Fill a gap from JetStream before anything newer is forwarded."""
        try:
            found = await self.broker.fetch(topic.name, gap.first, gap.last)
        except Exception as exc:
            log.warning("gap repair of %s failed: %r", topic.name, exc)
            found = []
        if self.hub.topic(topic.name) is not topic:
            return
        frames, next_gap, filled = topic.fill(gap, found)
        if filled:
            self.stats.gaps_repaired += 1
        else:
            self.stats.gaps_unrepaired += 1
        for frame in frames:
            self._fan_out(topic, frame)
        if next_gap is not None:
            self._spawn(self._repair(topic, next_gap))

    async def resync(self, name: str | None = None) -> None:
        """After a NATS reconnect or a dropped message: catch up from JetStream."""
        names = [name] if name is not None else list(self.hub.topics)
        for topic_name in names:
            topic = self.hub.topic(topic_name)
            if topic is None or not topic.ready or topic.repairing:
                continue
            try:
                latest = await self.broker.latest(topic_name)
            except Exception as exc:
                log.warning("resync of %s failed: %r", topic_name, exc)
                continue
            if self.hub.topic(topic_name) is not topic or latest is None:
                continue
            if latest.seq < topic.seq:  # the stream was reset: the snapshot replaces all
                topic.reset(latest)
                self._fan_out(topic, topic.snapshot_frame())
            elif latest.seq > topic.seq:
                self._offer(topic, latest)

    # --- recovery from JetStream ------------------------------------------------

    def _backfill(self, topic: Topic) -> None:
        """Clients asked for events older than memory: one JetStream read per
        topic, shared by every client waiting for it, and reused for a few
        seconds by those who come next (a reconnect storm arrives over seconds)."""
        now = time.monotonic()
        for name, (_, expires, _) in list(self._recent_backfills.items()):
            if expires < now:
                del self._recent_backfills[name]
        recent = self._recent_backfills.get(topic.name)
        if recent is not None and recent[0] is topic:
            self._loop.call_soon(self._serve_backfill, topic, recent[2])
            return
        if topic.name in self._backfills:
            return
        task = self._loop.create_task(self.broker.fetch(topic.name, 1, None))
        self._backfills[topic.name] = task
        task.add_done_callback(lambda done: self._backfilled(topic, done))

    def _backfilled(self, topic: Topic, task: asyncio.Task[list[Envelope]]) -> None:
        del self._backfills[topic.name]
        if self.hub.topic(topic.name) is not topic:
            return
        found = [] if task.cancelled() or task.exception() else task.result()
        self.stats.recoveries_jetstream += 1
        stored = {envelope.seq: envelope for envelope in found}
        expires = time.monotonic() + BACKFILL_REUSE
        self._recent_backfills[topic.name] = (topic, expires, stored)
        self._serve_backfill(topic, stored)

    def _serve_backfill(self, topic: Topic, stored: dict[int, Envelope]) -> None:
        """Replay to each waiting client from memory and the stored events, or
        send a snapshot where the two do not cover what it missed."""
        if self.hub.topic(topic.name) is not topic:
            return
        recent = dict(topic.history)
        encoded: dict[int, bytes] = {}
        for client in list(topic.holders):
            since = client.waiting.get(topic.name)
            if since is None or client in topic.subscribers:
                continue
            del client.waiting[topic.name]
            wanted = range(since + 1, topic.seq + 1)
            if all(seq in recent or seq in stored for seq in wanted):
                for seq in wanted:
                    if seq not in recent and seq not in encoded:
                        encoded[seq] = topic.event_frame(stored[seq])
                    self.send(client, recent.get(seq) or encoded[seq])
            else:
                self.send(client, topic.snapshot_frame())
            topic.subscribers.add(client)

    # --- housekeeping ---------------------------------------------------------

    def _spawn(self, coroutine: Coroutine[Any, Any, Any]) -> None:
        task = self._loop.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
