"""One gateway node on asyncio: the effect runner around :class:`gateway.core.Core`.

Every decision of the delivery contract is the core's (sans-I/O). This
module only does what the core asks for: broker reads and subscriptions as
supervised tasks (reads at most :data:`READS_IN_FLIGHT` at once, so a
reconnect re-syncing thousands of topics does not flood JetStream or run
inside nats-py's own coroutines), one flush per loop tick (or ``coalesce``
window) that writes each connection's frames in one ``transport.write``,
the periodic sweep, token expiry timers and drain.

Broker callbacks (``on_message``, ``resync``, ``stream_reset``) are plain
functions that only schedule work: none awaits NATS.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from typing import TYPE_CHECKING, Any

from scorecast.gateway.auth import TokenVerifier
from scorecast.gateway.core import BrokerSubscribe, BrokerUnsubscribe, Core, Fetch, Load, Retry
from scorecast.gateway.settings import GatewaySettings
from scorecast.gateway.stats import Stats
from scorecast.gateway.supervise import Supervisor
from scorecast.protocol.codec import encode, text_frame
from scorecast.protocol.errors import ClientError, CloseCode, Unauthorized
from scorecast.protocol.messages import Auth, Authed, Reconnect, Subscribe, Unsubscribe

if TYPE_CHECKING:
    from scorecast.gateway.broker import Broker
    from scorecast.protocol.envelope import Envelope

__all__ = ["Node"]

log = logging.getLogger("scorecast.node")

SWEEP_INTERVAL = 0.05
RECONNECT_JITTER_MS = 1000
READS_IN_FLIGHT = 32  # broker reads (latest, fetch) at once


class Node:
    def __init__(self, settings: GatewaySettings, stats: Stats | None = None) -> None:
        self.settings = settings
        self.stats = stats or Stats()
        self.core = Core(
            history=settings.replay_buffer,
            soft_limit=settings.soft_limit,
            hard_limit=settings.hard_limit,
            grace=settings.slow_grace,
            max_topics_per_connection=settings.max_topics_per_connection,
            linger=settings.topic_linger,
            stats=self.stats,
        )
        self.hub = self.core.hub
        self.policy = self.core.policy
        self.broker: Broker | None = None
        self.clients: set[Any] = set()
        self.draining = False
        self.supervisor = Supervisor()
        self._flush_scheduled = False
        self._expiry: dict[Any, asyncio.TimerHandle] = {}
        self._reads = asyncio.Semaphore(READS_IN_FLIGHT)  # binds to a loop when first used
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
        self.supervisor.loop("node sweep", self._sweep)

    async def stop(self) -> None:
        """Cancel the sweep and every broker task, and wait for them."""
        for handle in self._expiry.values():
            handle.cancel()
        self._expiry.clear()
        await self.supervisor.stop()

    def _broker(self) -> Broker:
        if self.broker is None:
            raise RuntimeError("the node was not started")
        return self.broker

    # --- running the core's effects ------------------------------------------------

    def _run(self) -> None:
        core = self.core
        while core.effects:
            effects, core.effects = core.effects, []
            for effect in effects:
                self._perform(effect)
        if not self._flush_scheduled and core.pending():
            self._schedule_flush()

    def _perform(self, effect: Any) -> None:
        kind = type(effect)
        if kind is Load:
            self.supervisor.spawn(self._read_latest(effect), f"load {effect.topic.name}")
        elif kind is Fetch:
            self.supervisor.spawn(self._fetch(effect), f"fetch {effect.topic.name}")
        elif kind is BrokerUnsubscribe:
            self.supervisor.spawn(self._broker().unsubscribe(effect.topic), "unsubscribe")
        elif kind is BrokerSubscribe:
            self.supervisor.spawn(self._broker().subscribe(effect.topic), "subscribe")
        elif kind is Retry:
            asyncio.get_running_loop().call_later(effect.delay, self._retry, effect.effect)
        else:
            raise TypeError(f"unknown effect {effect!r}")

    def _retry(self, effect: Load | Fetch) -> None:
        if self.core.wanted(effect):
            self._perform(effect)

    async def _read_latest(self, effect: Load) -> None:
        name = effect.topic.name
        async with self._reads:
            if not self.core.wanted(effect):
                if effect.purpose == "load":
                    self.core.loaded(effect, None, time.monotonic())  # lets it unsubscribe
                    self._run()
                return
            try:
                if effect.purpose == "load":  # live first, so nothing falls between
                    await self._broker().subscribe(name)
                result: Any = await self._broker().latest(name)
            except Exception as exc:  # NATS down or timing out: the core decides
                result = exc
        self.core.loaded(effect, result, time.monotonic())
        self._run()

    async def _fetch(self, effect: Fetch) -> None:
        async with self._reads:
            result: list[Envelope] | Exception
            try:
                result = await self._broker().fetch(effect.topic.name, effect.first, effect.last)
            except Exception as exc:
                result = exc
        self.core.fetched(effect, result, time.monotonic())
        self._run()

    # --- writing ------------------------------------------------------------------

    def send(self, client: Any, frame: bytes) -> None:
        self.core.send(client, frame)
        if not self._flush_scheduled and self.core.pending():
            self._schedule_flush()

    def send_error(self, client: Any, error: ClientError) -> None:
        self.core.send_error(client, error)
        if not self._flush_scheduled and self.core.pending():
            self._schedule_flush()

    def _schedule_flush(self) -> None:
        self._flush_scheduled = True
        if self.settings.coalesce > 0:
            asyncio.get_running_loop().call_later(self.settings.coalesce, self._flush)
        else:
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        self.core.flush(time.monotonic())
        self._run()

    def figures(self) -> dict:
        """Counters and gauges of this node, for ``/metrics``."""
        figures = self.stats.snapshot()
        figures.update(self.core.figures())
        figures.update(
            connections=len(self.clients),
            nats_connected=int(self.broker is not None and self.broker.connected),
            nats_reconnects=getattr(self.broker, "reconnects", 0),
            loop_restarts=self.supervisor.loop_restarts,
            tasks_failed=self.supervisor.tasks_failed,
        )
        return figures

    async def _sweep(self) -> None:
        """Re-judge conflating clients; measure event-loop lag on the way."""
        while True:
            started = time.monotonic()
            await asyncio.sleep(SWEEP_INTERVAL)
            now = time.monotonic()
            self.stats.loop_lag_seconds = max(0.0, now - started - SWEEP_INTERVAL)
            self.core.sweep(now)
            self._run()

    # --- clients --------------------------------------------------------------

    def connect(self, client: Any) -> None:
        self.clients.add(client)
        self.core.connect(client)
        self.stats.connections_opened += 1
        self._watch_expiry(client)

    def disconnect(self, client: Any) -> None:
        expiry = self._expiry.pop(client, None)
        if expiry is not None:
            expiry.cancel()
        self.clients.discard(client)
        self.core.disconnect(client, time.monotonic())
        self.stats.connections_closed += 1
        self._run()

    def subscribe(self, client: Any, request: Subscribe) -> None:
        """Answer ``subscribed``, then a snapshot or a replay per topic."""
        try:
            self.core.subscribe(client, request, time.monotonic())
        finally:
            self._run()

    def unsubscribe(self, client: Any, request: Unsubscribe) -> None:
        self.core.unsubscribe(client, request, time.monotonic())
        self._run()

    def authenticate(self, client: Any, request: Auth) -> None:
        """Refresh the token: a new ``exp`` (and topics) for this connection;
        held topics the new token does not allow are unsubscribed."""
        if self.verifier is None:
            raise Unauthorized("this gateway does not use tokens", request.id)
        client.grant = self.verifier.verify(request.token, request.id)
        self._watch_expiry(client)
        self.core.send(client, text_frame(encode(Authed(id=request.id, exp=client.grant.exp))))
        self.core.regrant(client, request.id, time.monotonic())
        self._run()

    def _watch_expiry(self, client: Any) -> None:
        expiry = self._expiry.pop(client, None)
        if expiry is not None:
            expiry.cancel()
        grant = getattr(client, "grant", None)
        if self.verifier is not None and grant is not None and grant.exp:
            delay = max(0.0, grant.exp - time.time())
            loop = asyncio.get_running_loop()
            self._expiry[client] = loop.call_later(delay, self._expire, client)

    def _expire(self, client: Any) -> None:
        self._expiry.pop(client, None)
        if client.grant.exp <= time.time():
            self.core.close(client, CloseCode.TOKEN_EXPIRED, "token expired")
        else:
            self._watch_expiry(client)

    # --- broker events ------------------------------------------------------------

    def on_message(self, name: str, body: bytes) -> None:
        """A live message from the broker, in the subscription's order."""
        core = self.core
        core.message(name, body)
        if core.effects:
            self._run()
        elif not self._flush_scheduled and core.pending():
            self._schedule_flush()

    def resync(self, name: str | None = None) -> None:
        """After a broker reconnect or a dropped message: re-read each held
        topic (or one) as tasks, at most READS_IN_FLIGHT at once. Returns at
        once: safe to call from inside nats-py's callbacks."""
        self.core.resync(name)
        self._run()

    def stream_reset(self) -> None:
        """The SCORES stream was recreated: every held topic is reloaded and
        every holder gets a snapshot replacing its state (logged, counted)."""
        self.core.stream_reset()
        self._run()

    # --- drain ------------------------------------------------------------------

    async def drain(self) -> None:
        """Hint every client to reconnect elsewhere, spread over the window,
        closing each with 1012 at its turn; return when all are gone or the
        deadline passes."""
        self.draining = True
        window = self.settings.drain_window
        for client in list(self.clients):
            asyncio.get_running_loop().call_later(
                random.uniform(0, window), self._send_away, client
            )
        deadline = time.monotonic() + self.settings.drain_deadline
        while self.clients and time.monotonic() < deadline:
            await asyncio.sleep(0.05)

    def _send_away(self, client: Any) -> None:
        if client.closed:
            return
        hint = Reconnect(after_ms=random.randint(0, RECONNECT_JITTER_MS), reason="draining")
        self.core.send(client, text_frame(encode(hint)))
        self.core.close(client, CloseCode.RESTART, "restart")
