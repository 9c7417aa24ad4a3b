"""``scorecast ingest``: the HTTP endpoint through which data feeds push events.

``POST /v1/events`` takes one feed item, a JSON array of them, or NDJSON
(format in :mod:`publishers.feed`). Answers, all JSON:

- 202 ``{"accepted": [{"topic", "seq", "duplicate"}, ...]}``, in the batch's
  order; ``duplicate`` is true for an item whose ``id`` was already stored
  within the last two minutes (it was not stored again).
- 400 ``{"errors": [{"index": i, "error": "..."}, ...]}``: one entry per bad
  item (``index`` null when the body as a whole is wrong, e.g. empty); the
  batch is refused whole and nothing of it is published.
- 413 ``{"errors": [{"index": null, "error": "..."}]}``: a body over
  ``max_body`` bytes or a batch of more than ``max_batch`` items; nothing
  published. Also 413, shaped like 503 below, when an item's envelope (its
  patch plus the topic's full state) would exceed the NATS max_payload.
- 503 ``{"accepted": [...], "errors": [{"index": i, "error": "..."}]}`` with
  ``Retry-After``: NATS or JetStream is unavailable. Items are published in
  order, so those listed in ``accepted`` are stored and item ``i`` onwards
  are not; post the batch again with the same ids and the stored ones come
  back as duplicates. Items without ``id`` have no such protection.
- 409, same shape: an item's ``id`` already names an event of another topic;
  500, same shape: the topic's newest stored message is not an envelope.

``GET /healthz`` is 200 while the process lives; ``GET /readyz`` is 200 when
connected to NATS, else 503.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

import orjson
from aiohttp import web

from publishers.connection import Connecting, open_publisher
from publishers.errors import (
    BackendError,
    CorruptTopic,
    EnvelopeTooLarge,
    FeedIdConflict,
    InvalidFeed,
)
from publishers.feed import check_batch, split_batch
from publishers.stream import TopicPublisher

__all__ = ["MAX_BATCH", "MAX_BODY", "make_app", "run_ingest"]

log = logging.getLogger(__name__)

MAX_BODY = 1 << 20  # bytes
MAX_BATCH = 1000  # items


def make_app(
    publisher: TopicPublisher, *, max_body: int = MAX_BODY, max_batch: int = MAX_BATCH
) -> web.Application:
    """The ingest HTTP application, publishing through ``publisher``."""
    ingest = _Ingest(publisher, max_body=max_body, max_batch=max_batch)
    app = web.Application(client_max_size=max_body)
    app.router.add_post("/v1/events", ingest.post_events)
    app.router.add_get("/healthz", ingest.healthz)
    app.router.add_get("/readyz", ingest.readyz)
    return app


class _Ingest:
    def __init__(self, publisher: TopicPublisher, *, max_body: int, max_batch: int) -> None:
        self._publisher = publisher
        self._max_body = max_body
        self._max_batch = max_batch

    async def post_events(self, request: web.Request) -> web.Response:
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return _errors(413, [(None, f"body larger than {self._max_body} bytes")])
        items = split_batch(body)
        if not items:
            return _errors(400, [(None, "no events")])
        if len(items) > self._max_batch:
            return _errors(413, [(None, f"more than {self._max_batch} events in one batch")])
        try:
            events = check_batch(items)
        except InvalidFeed as exc:
            return _errors(400, exc.problems)
        accepted: list[dict[str, Any]] = []
        for index, event in enumerate(events):
            try:
                published = await self._publisher.publish(
                    event.topic, event.kind, event.data, feed_id=event.id
                )
            except CorruptTopic as exc:
                log.error("ingest: %s", exc)
                return _errors(500, [(index, str(exc))], accepted)
            except BackendError as exc:
                log.warning("ingest: %s", exc)
                return _errors(503, [(index, str(exc))], accepted, {"Retry-After": "1"})
            except FeedIdConflict as exc:
                return _errors(409, [(index, str(exc))], accepted)
            except EnvelopeTooLarge as exc:
                return _errors(413, [(index, str(exc))], accepted)
            accepted.append(
                {"topic": event.topic, "seq": published.seq, "duplicate": published.duplicate}
            )
        return _json(202, {"accepted": accepted})

    async def healthz(self, request: web.Request) -> web.Response:
        return _json(200, {"status": "ok"})

    async def readyz(self, request: web.Request) -> web.Response:
        if self._publisher.connected:
            return _json(200, {"status": "ready"})
        return _json(503, {"status": "not connected to NATS"})


def _errors(
    status: int,
    problems: list[tuple[int | None, str]],
    accepted: list[dict[str, Any]] | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    body: dict[str, Any] = {"errors": [{"index": i, "error": e} for i, e in problems]}
    if accepted is not None:
        body = {"accepted": accepted, **body}
    return _json(status, body, headers)


def _json(status: int, body: Any, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status, body=orjson.dumps(body), content_type="application/json", headers=headers
    )


async def run_ingest(
    nats_url: str | Sequence[str],
    *,
    host: str = "127.0.0.1",
    port: int = 8081,
    history: int = 1000,
    replicas: int = 1,
    max_body: int = MAX_BODY,
    max_batch: int = MAX_BATCH,
    stop: asyncio.Event | None = None,
) -> None:
    """Serve ingest on ``host:port`` until ``stop`` is set (forever without one)."""
    # edges: listen first (503 + Retry-After until NATS answers), then connect
    publisher = Connecting(nats_url)
    nc = None
    runner: web.AppRunner | None = None
    try:
        app = make_app(publisher, max_body=max_body, max_batch=max_batch)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, host, port)
        await site.start()
        for address in runner.addresses:
            log.info("ingest listening on http://%s:%s/v1/events", *address[:2])
        nc, connected = await open_publisher(
            nats_url, name="scorecast-ingest", history=history, replicas=replicas
        )
        publisher.ready(connected)
        await (stop or asyncio.Event()).wait()
    finally:
        if runner is not None:
            await runner.cleanup()
        if nc is not None:
            await nc.close()
