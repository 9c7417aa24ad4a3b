"""How publishers connect to NATS: one place for the client options."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

import nats
from nats.aio.client import Client

from publishers.errors import JetStreamUnavailable
from publishers.stream import TopicPublisher, ensure_stream

__all__ = ["connect", "open_publisher"]

log = logging.getLogger(__name__)

_RETRY_SECONDS = 1.0


async def connect(nats_url: str | Sequence[str], *, name: str) -> Client:
    """Connect to ``nats_url``, reconnecting forever.

    ``nats_url`` is one URL, several separated by commas, or a sequence of them.

    A publisher outlives NATS restarts: while disconnected its publishes fail
    fast with :class:`~publishers.errors.JetStreamUnavailable` and it retries.
    """

    client: Client | None = None

    async def disconnected() -> None:
        if client is None or not client.is_closed:  # closing on purpose is no news
            log.warning("%s: disconnected from NATS", name)

    async def reconnected() -> None:
        log.info("%s: reconnected to NATS", name)

    async def error(exc: Exception) -> None:
        log.warning("%s: NATS error: %r", name, exc)

    urls = [nats_url] if isinstance(nats_url, str) else list(nats_url)
    servers = [url.strip() for entry in urls for url in entry.split(",") if url.strip()]
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
