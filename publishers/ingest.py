"""``scorecast ingest``: the HTTP endpoint through which data feeds push events.

``POST /v1/events`` takes one feed item, a JSON array of them, or NDJSON
(format in :mod:`publishers.feed` and docs/FEEDS.md), as ``application/json``
or ``application/x-ndjson`` (a request without Content-Type, or with the
form type that ``curl -d`` and urllib send by default, is read as
either). Everything that can be checked is checked before the first item is
stored, in this order, and a refusal stores nothing:

- 401 ``{"errors": [{"index": null, "error": reason}]}``: ingest runs with
  keys and the request has no ``Authorization: Bearer`` token, or a bad,
  expired, ``exp``-less or ``publish``-less one (PROTOCOL.md section 8);
- 415: a Content-Type other than JSON or NDJSON;
- 413: a body over ``max_body`` bytes (``Content-Length`` or counted while
  reading, chunked bodies alike) or more than ``max_batch`` items;
- 408: the body did not arrive within ``body_timeout`` seconds;
- 400 ``{"errors": [{"index": i, "error": "..."}, ...]}``: one entry per bad
  item (``index`` null when the body as a whole is wrong): not JSON, not the
  feed format, ``data`` nested too deep, integers beyond 64 bits;
- 403, same shape: items whose topic the token's ``publish`` patterns do
  not allow;
- 409 / 413, same shape: a feed id that already names an event of another
  topic; an event that with the topic's full state would exceed the NATS
  ``max_payload``.

Then the items are stored in order:

- 202 ``{"accepted": [{"topic", "seq", "duplicate"}, ...]}``, in the batch's
  order; ``duplicate`` is true for an item whose ``id`` was stored before
  (for 48 hours at least, :mod:`publishers.feed_ids`); ``topic`` and ``seq``
  then name the event it was stored as.
- 503 ``{"accepted": [...], "errors": [{"index": i, "error": "..."}]}`` with
  ``Retry-After``: NATS or JetStream failed after storing began (or before).
  Items are published in order, so those listed in ``accepted`` are stored
  and item ``i`` onwards are not; post the batch again with the same ids and
  the stored ones come back as duplicates. Items without ``id`` have no such
  protection. 409/413/500 met while storing (another publisher changed the
  topic between the check and the store) have the same shape.

Slow clients: a connection that has not sent a whole request head within
``header_timeout`` seconds is closed (aiohttp's keep-alive timer covers a
connection from its first byte); header lines are bounded by aiohttp's
limits (8 KiB). Memory per request is bounded by ``max_body``, and requests
beyond ``max_concurrent`` at once get 503 with ``Retry-After`` unread.

``GET /healthz`` is 200 while the process lives; ``GET /readyz`` is 200 when
connected to NATS, else 503.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Protocol

import orjson
from aiohttp import web

from scorecast.gateway.auth import Grant, TokenVerifier
from scorecast.protocol.errors import Unauthorized
from scorecast.publishers.connection import Connecting, open_publisher
from scorecast.publishers.errors import (
    BackendError,
    CorruptTopic,
    EnvelopeProblem,
    EnvelopeTooLarge,
    FeedError,
    FeedIdConflict,
    InvalidFeed,
)
from scorecast.publishers.feed import FeedEvent, check_batch, split_batch
from scorecast.publishers.settings import IngestSettings, PublisherSettings
from scorecast.publishers.stream import Published

__all__ = ["feed_verifier", "make_app", "run_ingest"]

log = logging.getLogger(__name__)

# the limits and timeouts: publishers.settings.IngestSettings, declared once
_DEFAULT = IngestSettings()

_JSON_TYPES = frozenset(
    {"application/json", "application/x-ndjson", "application/ndjson", "application/jsonl"}
)


class IngestPublisher(Protocol):
    """What ingest asks of its publisher: a
    :class:`~publishers.stream.TopicPublisher`, or a
    :class:`~publishers.connection.Connecting` standing in for one."""

    @property
    def connected(self) -> bool: ...

    async def check(
        self, items: list[tuple[str, str, Any, str | None]]
    ) -> list[tuple[int, FeedError]]: ...

    async def publish(
        self,
        topic: str,
        kind: str,
        patch: Any,
        *,
        feed_id: str | None = None,
        ts: float | None = None,
    ) -> Published: ...


def make_app(
    publisher: IngestPublisher,
    *,
    max_body: int = _DEFAULT.max_body,
    max_batch: int = _DEFAULT.max_batch,
    verifier: TokenVerifier | None = None,
    body_timeout: float = _DEFAULT.body_timeout,
    max_concurrent: int = _DEFAULT.max_concurrent,
) -> web.Application:
    """The ingest HTTP application, publishing through ``publisher``.

    ``verifier`` (checking the ``publish`` claim) makes tokens required.
    More than ``max_concurrent`` requests at once are answered 503 with
    ``Retry-After`` before their bodies are read, so that memory stays below
    ``max_concurrent`` x ``max_body`` whatever the clients do.
    """
    ingest = _Ingest(
        publisher,
        max_body=max_body,
        max_batch=max_batch,
        verifier=verifier,
        body_timeout=body_timeout,
        max_concurrent=max_concurrent,
    )
    # the body is read by _Ingest itself, bounded; this only covers aiohttp's own readers
    app = web.Application(client_max_size=max_body)
    app.router.add_post("/v1/events", ingest.post_events)
    app.router.add_get("/healthz", ingest.healthz)
    app.router.add_get("/readyz", ingest.readyz)
    return app


def feed_verifier(*, secret: str | None, public_key_file: str | None) -> TokenVerifier | None:
    """The verifier of feed tokens (``publish`` claim required); None without keys."""
    if not secret and not public_key_file:
        return None
    return TokenVerifier(
        secret=secret, public_key_file=public_key_file, claim="publish", claim_required=True
    )


class _Refused(Exception):
    def __init__(self, status: int, problems: list[tuple[int | None, str]]) -> None:
        super().__init__(status)
        self.status = status
        self.problems = problems


class _Ingest:
    def __init__(
        self,
        publisher: IngestPublisher,
        *,
        max_body: int,
        max_batch: int,
        verifier: TokenVerifier | None,
        body_timeout: float,
        max_concurrent: int,
    ) -> None:
        self._publisher = publisher
        self._max_concurrent = max_concurrent
        self._in_flight = 0
        self._max_body = max_body
        self._max_batch = max_batch
        self._verifier = verifier
        self._body_timeout = body_timeout

    async def post_events(self, request: web.Request) -> web.Response:
        # the token first, from the headers alone: without one, no slot is taken
        try:
            grant = self._authorize(request)
        except _Refused as refused:
            challenge = {"WWW-Authenticate": 'Bearer realm="scorecast-ingest"'}
            return _errors(refused.status, refused.problems, headers=challenge, close=True)
        if self._in_flight >= self._max_concurrent:
            busy: list[tuple[int | None, str]] = [
                (None, f"more than {self._max_concurrent} requests at once; retry")
            ]
            return _errors(503, busy, headers={"Retry-After": "1"}, close=True)
        self._in_flight += 1
        try:
            return await self._post_events(request, grant)
        finally:
            self._in_flight -= 1

    async def _post_events(self, request: web.Request, grant: Grant | None) -> web.Response:
        try:
            _check_content_type(request)
            body = await self._read_body(request)
            events = self._parse(body)
            _check_grant(grant, events)
            problems = await self._publisher.check(
                [(event.topic, event.kind, event.data, event.id) for event in events]
            )
        except _Refused as refused:
            # the unread rest of a refused body is not worth reading
            close = refused.status in (408, 413, 415)
            return _errors(refused.status, refused.problems, close=close)
        except CorruptTopic as exc:  # nothing stored: every item from 0 on is not
            log.error("ingest: %s", exc)
            return _errors(500, [(0, str(exc))], [])
        except BackendError as exc:
            log.warning("ingest: %s", exc)
            return _errors(503, [(0, str(exc))], [], {"Retry-After": "1"})
        if problems:
            kinds = {type(problem) for _, problem in problems}
            status = 400 if EnvelopeProblem in kinds else 409 if FeedIdConflict in kinds else 413
            return _errors(status, [(i, str(problem)) for i, problem in problems], [])
        return await self._store(events)

    def _authorize(self, request: web.Request) -> Grant | None:
        if self._verifier is None:
            return None
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise _Refused(401, [(None, "missing token: send Authorization: Bearer <JWT>")])
        try:
            return self._verifier.verify(token.strip())
        except Unauthorized as exc:
            raise _Refused(401, [(None, exc.message)]) from None

    async def _read_body(self, request: web.Request) -> bytes:
        too_big = _Refused(413, [(None, f"body larger than {self._max_body} bytes")])
        if request.content_length is not None and request.content_length > self._max_body:
            raise too_big
        chunks: list[bytes] = []
        size = 0
        try:
            async with asyncio.timeout(self._body_timeout):
                async for chunk in request.content.iter_any():
                    size += len(chunk)
                    if size > self._max_body:
                        raise too_big
                    chunks.append(chunk)
        except TimeoutError:
            raise _Refused(
                408, [(None, f"request body not received within {self._body_timeout:g} s")]
            ) from None
        return b"".join(chunks)

    def _parse(self, body: bytes) -> list[FeedEvent]:
        items = split_batch(body)
        if not items:
            raise _Refused(400, [(None, "no events")])
        if len(items) > self._max_batch:
            raise _Refused(413, [(None, f"more than {self._max_batch} events in one batch")])
        try:
            return check_batch(items)
        except InvalidFeed as exc:
            raise _Refused(400, exc.problems) from None

    async def _store(self, events: list[FeedEvent]) -> web.Response:
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
            except (EnvelopeTooLarge, EnvelopeProblem) as exc:
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


# what curl -d and urllib send when nobody chose a type: read like no type
_UNCHOSEN_TYPES = frozenset({"application/x-www-form-urlencoded"})


def _check_content_type(request: web.Request) -> None:
    if "Content-Type" not in request.headers or request.content_type in _UNCHOSEN_TYPES:
        return  # read as JSON or NDJSON, whichever it is
    if request.content_type not in _JSON_TYPES and not request.content_type.endswith("+json"):
        raise _Refused(
            415,
            [(None, f"Content-Type {request.content_type!r}: send application/json or "
                    "application/x-ndjson")],
        )  # fmt: skip


def _check_grant(grant: Grant | None, events: list[FeedEvent]) -> None:
    if grant is None:
        return
    refused: list[tuple[int | None, str]] = [
        (index, f"the token does not allow publishing to {event.topic!r}")
        for index, event in enumerate(events)
        if not grant.allows(event.topic)
    ]
    if refused:
        raise _Refused(403, refused)


def _errors(
    status: int,
    problems: list[tuple[int | None, str]],
    accepted: list[dict[str, Any]] | None = None,
    headers: dict[str, str] | None = None,
    *,
    close: bool = False,
) -> web.Response:
    body: dict[str, Any] = {"errors": [{"index": i, "error": e} for i, e in problems]}
    if accepted is not None:
        body = {"accepted": accepted, **body}
    response = _json(status, body, headers)
    if close:
        response.force_close()
    return response


def _json(status: int, body: Any, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status, body=orjson.dumps(body), content_type="application/json", headers=headers
    )


async def run_ingest(
    publisher: PublisherSettings,
    ingest: IngestSettings = _DEFAULT,
    *,
    stop: asyncio.Event | None = None,
) -> None:
    """Serve ingest on ``ingest.host:ingest.port`` until ``stop`` is set
    (forever without one), publishing as ``publisher`` says.

    It listens first and answers 503 with ``Retry-After`` until NATS answers."""
    verifier = feed_verifier(secret=ingest.jwt_secret, public_key_file=ingest.jwt_public_key)
    if verifier is None:
        log.warning(
            "ingest: no --jwt-secret or --jwt-public-key: anyone who can reach "
            "http://%s:%s/v1/events can publish to every topic",
            ingest.host,
            ingest.port,
        )
    connecting = Connecting(publisher.nats)
    nc = None
    runner: web.AppRunner | None = None
    try:
        app = make_app(
            connecting,
            max_body=ingest.max_body,
            max_batch=ingest.max_batch,
            verifier=verifier,
            body_timeout=ingest.body_timeout,
            max_concurrent=ingest.max_concurrent,
        )
        # no lingering: the rest of a refused (slow, oversized) body is not read
        runner = web.AppRunner(
            app, access_log=None, keepalive_timeout=ingest.header_timeout, lingering_time=0
        )
        await runner.setup()
        site = web.TCPSite(runner, ingest.host, ingest.port)
        await site.start()
        for address in runner.addresses:
            log.info("ingest listening on http://%s:%s/v1/events", *address[:2])
        nc, connected = await open_publisher(publisher, name="scorecast-ingest")
        connecting.ready(connected)
        await (stop or asyncio.Event()).wait()
    finally:
        if runner is not None:
            await runner.cleanup()
        if nc is not None:
            await nc.close()
