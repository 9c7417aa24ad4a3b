"""How publishers connect to NATS: one place for the client options.

Until NATS first answers, :func:`connect` waits in
:func:`scorecast.outage.wait_for_nats` (one warning naming the URLs, then a
summary at most every 30 s; cancelling it stops it at once). After that
nats-py reconnects by itself, and its repeated errors go through the same
:class:`~scorecast.outage.OutageLog`, so an outage later on is as quiet.
``auth`` carries the role's credentials (PROTOCOL.md section 9).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

import nats
import nats.errors
from nats.aio.client import Client

from scorecast.outage import OutageLog, display_urls, split_servers, wait_for_nats
from scorecast.protocol.nats_auth import ANONYMOUS, NatsAuth
from scorecast.publishers.errors import JetStreamUnavailable, NatsUnreachable
from scorecast.publishers.feed_ids import FeedIds
from scorecast.publishers.settings import PublisherSettings
from scorecast.publishers.stream import TopicPublisher, ensure_stream

__all__ = ["Connecting", "connect", "open_publisher", "server_list"]

log = logging.getLogger(__name__)

server_list = split_servers  # one URL, several separated by commas, or a sequence


async def connect(
    nats_url: str | Sequence[str],
    *,
    name: str,
    auth: NatsAuth = ANONYMOUS,
    give_up_after: float | None = None,
) -> Client:
    """Connect to ``nats_url``, reconnecting forever once connected.

    ``nats_url`` is one URL, several separated by commas, or a sequence of them.

    A publisher outlives NATS restarts: while disconnected its publishes fail
    fast with :class:`~publishers.errors.JetStreamUnavailable` and it retries.
    The first connection is waited for forever too, unless ``give_up_after``
    seconds are given: then :class:`~publishers.errors.NatsUnreachable`
    naming the URLs (a one-shot command such as ``replay`` must end).
    """

    client: Client | None = None
    servers = split_servers(nats_url)
    outage = OutageLog(log, name, servers)
    last_error: list[Exception] = []

    async def disconnected() -> None:
        if client is None or not client.is_closed:  # closing on purpose is no news
            log.warning("%s: disconnected from NATS", name)

    async def reconnected() -> None:
        outage.recovered()
        log.info("%s: reconnected to NATS", name)

    async def error(exc: Exception) -> None:
        last_error[:] = [exc]
        if isinstance(exc, OSError | TimeoutError | nats.errors.NoServersError):
            outage.failed(exc)  # one line, then a summary every 30 s
        else:
            log.warning("%s: NATS error: %r", name, exc)

    async def attempt() -> Client:
        await wait_for_nats(servers, outage)
        return await nats.connect(
            servers=servers,
            name=name,
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.5,
            disconnected_cb=disconnected,
            reconnected_cb=reconnected,
            error_cb=error,
            **auth.options(),
        )

    if give_up_after is None:
        client = await attempt()
        return client
    try:
        client = await asyncio.wait_for(attempt(), give_up_after)
    except (TimeoutError, nats.errors.Error, OSError) as exc:
        why = last_error[0] if last_error else exc
        raise NatsUnreachable(
            f"NATS at {display_urls(servers)} unreachable after {give_up_after:g} s: {why!r}"
        ) from None
    return client


async def open_publisher(
    settings: PublisherSettings,
    *,
    name: str,
    give_up_after: float | None = None,
) -> tuple[Client, TopicPublisher]:
    """Connect as ``settings`` say, make sure the SCORES stream and the
    feed-id bucket exist in their configuration, and return a publisher on them.

    While JetStream is not ready yet (a cluster still electing its leaders),
    setting up the stream is retried every ``settings.setup_retry`` seconds
    (for ``give_up_after`` seconds when given); a configuration the server
    refuses (:class:`~publishers.errors.StreamConfigError`) is raised at once.
    """
    s = settings
    nc = await connect(s.nats, name=name, auth=s.nats_auth(), give_up_after=give_up_after)
    loop = asyncio.get_running_loop()
    deadline = None if give_up_after is None else loop.time() + give_up_after
    try:
        while True:
            try:
                js = nc.jetstream()
                await ensure_stream(
                    js,
                    history=s.stream_history,
                    replicas=s.replicas,
                    duplicate_window=s.duplicate_window,
                )
                feed_ids = await FeedIds.open(js, replicas=s.replicas, ttl=s.feed_id_ttl)
                break
            except JetStreamUnavailable as exc:
                if deadline is not None and loop.time() >= deadline:
                    raise NatsUnreachable(
                        f"JetStream at {','.join(server_list(s.nats))} not ready after "
                        f"{give_up_after:g} s: {exc}"
                    ) from None
                log.warning("%s: setting up stream SCORES: %s; retrying", name, exc)
                await asyncio.sleep(s.setup_retry)
    except BaseException:
        await nc.close()
        raise
    return nc, TopicPublisher(nc, feed_ids=feed_ids)


class Connecting:
    """Stands in for a :class:`TopicPublisher` until NATS first answers, so an
    HTTP endpoint can listen at once: it is not ``connected`` and every
    publish fails with :class:`JetStreamUnavailable` (ingest answers 503 with
    ``Retry-After``). ``ready(publisher)`` hands every call on from then on."""

    def __init__(self, nats_url: str | Sequence[str]) -> None:
        self._urls = display_urls(split_servers(nats_url))
        self._publisher: TopicPublisher | None = None

    def ready(self, publisher: TopicPublisher) -> None:
        self._publisher = publisher

    @property
    def connected(self) -> bool:
        return self._publisher is not None and self._publisher.connected

    async def publish(self, *args, **kwargs):
        if self._publisher is None:
            raise JetStreamUnavailable(f"not connected to NATS at {self._urls} yet")
        return await self._publisher.publish(*args, **kwargs)

    def __getattr__(self, name: str):
        if self._publisher is None:
            raise JetStreamUnavailable(f"not connected to NATS at {self._urls} yet")
        return getattr(self._publisher, name)
