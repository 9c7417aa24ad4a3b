"""How publishers connect to NATS: one place for the client options.

Until NATS first answers, :func:`connect` waits in
:func:`scorecast.outage.wait_for_nats` (one warning naming the URLs, then a
summary at most every 30 s; cancelling it stops it at once). After that
nats-py reconnects by itself, and its repeated errors go through the same
:class:`~scorecast.outage.OutageLog`, so an outage later on is as quiet.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

import nats
import nats.errors
from nats.aio.client import Client

from publishers.errors import JetStreamUnavailable
from publishers.stream import TopicPublisher, ensure_stream
from scorecast.outage import OutageLog, display_urls, split_servers, wait_for_nats

__all__ = ["Connecting", "connect", "open_publisher"]

log = logging.getLogger(__name__)

_RETRY_SECONDS = 1.0


async def connect(nats_url: str | Sequence[str], *, name: str) -> Client:
    """Connect to ``nats_url``, reconnecting forever.

    ``nats_url`` is one URL, several separated by commas, or a sequence of them.

    A publisher outlives NATS restarts: while disconnected its publishes fail
    fast with :class:`~publishers.errors.JetStreamUnavailable` and it retries.
    """

    client: Client | None = None
    servers = split_servers(nats_url)
    outage = OutageLog(log, name, servers)

    async def disconnected() -> None:
        if client is None or not client.is_closed:  # closing on purpose is no news
            log.warning("%s: disconnected from NATS", name)

    async def reconnected() -> None:
        outage.recovered()
        log.info("%s: reconnected to NATS", name)

    async def error(exc: Exception) -> None:
        if isinstance(exc, OSError | TimeoutError | nats.errors.NoServersError):
            outage.failed(exc)  # one line, then a summary every 30 s
        else:
            log.warning("%s: NATS error: %r", name, exc)

    await wait_for_nats(servers, outage)
    client = await nats.connect(
        servers=servers,
        name=name,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.5,
        disconnected_cb=disconnected,
        reconnected_cb=reconnected,
        error_cb=error,
    )
    return client


async def open_publisher(
    nats_url: str | Sequence[str], *, name: str, history: int, replicas: int
) -> tuple[Client, TopicPublisher]:
    """Connect, make sure the SCORES stream exists, and return a publisher on it.

    While JetStream is not ready yet (a cluster still electing its leaders),
    setting up the stream is retried; a configuration the server refuses
    (:class:`~publishers.errors.StreamConfigError`) is raised at once.
    """
    nc = await connect(nats_url, name=name)
    try:
        while True:
            try:
                await ensure_stream(nc.jetstream(), history=history, replicas=replicas)
                break
            except JetStreamUnavailable as exc:
                log.warning("%s: setting up stream SCORES: %s; retrying", name, exc)
                await asyncio.sleep(_RETRY_SECONDS)
    except BaseException:
        await nc.close()
        raise
    return nc, TopicPublisher(nc)


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
