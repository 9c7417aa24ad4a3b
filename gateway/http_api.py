"""``GET /v1/topics/<topic>`` and ``/v1/topics/<topic>/events?since=n``:
snapshots and short replays over plain HTTP, fit for a cache in front.

- A topic this gateway holds is answered from memory at once.
- Otherwise the snapshot is one JetStream read, shared by every request that
  arrives while it is in flight (request coalescing) and kept for
  ``--http-max-age`` seconds (1 by default: as long as a cache in front may
  serve it) for those that come next; ``jetstream_reads`` counts the reads.
- ``ETag: "<seq>"``; a matching ``If-None-Match`` is ``304``.
- ``Cache-Control: public, max-age=<--http-max-age>`` (``private`` when the
  gateway requires tokens).

Answers that need an await are :class:`Deferred`: the connection's handshake
hook runs the coroutine as a task and writes its response when it is done,
so the event loop never blocks on NATS.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import parse_qs

import msgspec
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from scorecast.protocol.codec import encode
from scorecast.protocol.envelope import Envelope
from scorecast.protocol.messages import NULL, Event, Snapshot
from scorecast.protocol.topics import is_valid_topic

if TYPE_CHECKING:
    from scorecast.gateway.connection import Client
    from scorecast.gateway.server import Gateway

__all__ = ["Deferred", "TopicsApi", "plain"]

log = logging.getLogger("scorecast.http")

PREFIX = "/v1/topics/"
MAX_REPLAY = 1000  # events one /events answer replays; more: the snapshot
MAX_KEPT = 10_000


class TopicSnapshot(msgspec.Struct):
    topic: str
    seq: int
    ts: float | None
    state: msgspec.Raw
    subscribers: int


class Deferred:
    """An HTTP answer that is ready after an await."""

    def __init__(self, coroutine: Coroutine[Any, Any, Response]) -> None:
        self.coroutine = coroutine

    def start(self, client: Client) -> None:
        tasks = client.gateway.answering
        task = asyncio.get_running_loop().create_task(self.coroutine)
        tasks.add(task)

        def done(task: asyncio.Task[Response]) -> None:
            tasks.discard(task)
            if task.cancelled():
                return
            error = task.exception()
            if error is not None:
                log.warning("HTTP answer failed: %r", error)
                response = plain(HTTPStatus.SERVICE_UNAVAILABLE, "NATS unavailable", 1)
            else:
                response = task.result()
            client.respond(response)

        task.add_done_callback(done)


def plain(status: HTTPStatus, reason: str, retry_after: int | None = None) -> Response:
    body = (reason + "\n").encode()
    response = _response(status, body, "text/plain; charset=utf-8")
    if retry_after is not None:
        response.headers["Retry-After"] = str(retry_after)
    return response


def _response(status: HTTPStatus, body: bytes, content_type: str | None) -> Response:
    headers = Headers([("Connection", "close"), ("Content-Length", str(len(body)))])
    if content_type is not None:
        headers["Content-Type"] = content_type
    return Response(status.value, status.phrase, headers, body)


def _matches(if_none_match: str | None, etag: str) -> bool:
    if not if_none_match:
        return False
    tags = [tag.strip().removeprefix("W/") for tag in if_none_match.split(",")]
    return "*" in tags or etag in tags


class TopicsApi:
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.jetstream_reads = 0
        self.requests = 0
        self._reads: dict[str, asyncio.Task[Envelope | None]] = {}
        self._kept: dict[str, tuple[float, Envelope | None]] = {}

    def figures(self) -> dict[str, int]:
        return {"http_requests": self.requests, "http_jetstream_reads": self.jetstream_reads}

    def cache_control(self) -> str:
        scope = "private" if self.gateway.node.verifier is not None else "public"
        return f"{scope}, max-age={self.gateway.settings.http_max_age:g}"

    def answer(
        self, request: Request, grant_allows: Callable[[str], bool], headers: list[tuple[str, str]]
    ) -> Response | Deferred:
        """A Response, or a Deferred one, for an admitted ``/v1/topics`` request."""
        self.requests += 1
        path, _, query = request.path.partition("?")
        rest = path[len(PREFIX) :]
        events = rest.endswith("/events")
        name = rest.removesuffix("/events") if events else rest
        if not is_valid_topic(name):
            return plain(HTTPStatus.BAD_REQUEST, f"invalid topic {name[:60]!r}")
        if not grant_allows(name):
            return plain(HTTPStatus.FORBIDDEN, f"not allowed: {name}")
        if not events:
            return self._snapshot(name, request.headers.get("If-None-Match"), headers)
        since_text = parse_qs(query).get("since", ["0"])[0]
        if not since_text.isdigit():
            return plain(HTTPStatus.BAD_REQUEST, "since must be a position, 0 or more")
        return self._events(name, int(since_text), headers)

    # --- snapshot -------------------------------------------------------------

    def _snapshot(
        self, name: str, if_none_match: str | None, headers: list[tuple[str, str]]
    ) -> Response | Deferred:
        topic = self.gateway.node.hub.topic(name)
        if topic is not None and topic.ready:
            return self._snapshot_response(
                name, topic.seq, topic.ts, topic.state, if_none_match, headers
            )
        kept = self._kept_latest(name)
        if kept is not False:
            return self._latest_response(name, kept, if_none_match, headers)

        async def later() -> Response:
            latest = await self.latest(name)
            return self._latest_response(name, latest, if_none_match, headers)

        return Deferred(later())

    def _latest_response(
        self,
        name: str,
        latest: Envelope | None,
        if_none_match: str | None,
        headers: list[tuple[str, str]],
    ) -> Response:
        if latest is None:
            return self._snapshot_response(name, 0, None, NULL, if_none_match, headers)
        return self._snapshot_response(
            name, latest.seq, latest.ts, latest.state, if_none_match, headers
        )

    def _snapshot_response(
        self,
        name: str,
        seq: int,
        ts: float | None,
        state: msgspec.Raw,
        if_none_match: str | None,
        headers: list[tuple[str, str]],
    ) -> Response:
        etag = f'"{seq}"'
        if _matches(if_none_match, etag):
            response = _response(HTTPStatus.NOT_MODIFIED, b"", None)
            del response.headers["Content-Length"]
        else:
            subscribers = self.gateway.occupancy.count(name)
            body = encode(TopicSnapshot(name, seq, ts, state, subscribers))
            response = _response(HTTPStatus.OK, body, "application/json")
        response.headers["ETag"] = etag
        response.headers["Cache-Control"] = self.cache_control()
        for header, value in headers:
            response.headers[header] = value
        return response

    def _kept_latest(self, name: str) -> Envelope | Literal[False] | None:
        """A kept read of ``name`` still fresh, or False."""
        kept = self._kept.get(name)
        if kept is None or kept[0] < time.monotonic():
            return False
        return kept[1]

    async def latest(self, name: str) -> Envelope | None:
        """The topic's snapshot from JetStream: one read for every concurrent
        request, kept ``--http-max-age`` seconds."""
        kept = self._kept_latest(name)
        if kept is not False:
            return kept
        task = self._reads.get(name)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._read(name))
            self._reads[name] = task
        return await asyncio.shield(task)

    async def _read(self, name: str) -> Envelope | None:
        try:
            broker = self.gateway.node.broker
            if broker is None or not broker.connected:
                raise ConnectionError("not connected to NATS")
            self.jetstream_reads += 1
            latest = await broker.latest(name)
            now = time.monotonic()
            if len(self._kept) >= MAX_KEPT:
                self._kept = {k: v for k, v in self._kept.items() if v[0] >= now}
            self._kept[name] = (now + self.gateway.settings.http_max_age, latest)
            return latest
        finally:
            del self._reads[name]

    # --- events ---------------------------------------------------------------

    def _events(self, name: str, since: int, headers: list[tuple[str, str]]) -> Response | Deferred:
        topic = self.gateway.node.hub.topic(name)
        if topic is not None and topic.ready:
            frames = topic.frames_since(since)
            if frames is not None:
                payloads = [_payload(frame) for frame in frames]
                return self._json(name, b'"events":[' + b",".join(payloads) + b"]", headers)
            if since > topic.seq:  # ahead of the topic (the stream was reset)
                frame = _payload(topic.snapshot_frame())
                return self._json(name, b'"snapshot":' + frame, headers)

        async def later() -> Response:
            held = self.gateway.node.hub.topic(name)
            if held is not None and held.ready:  # memory is newer than a kept read
                seq, snapshot = held.seq, _payload(held.snapshot_frame())
            else:
                latest = await self.latest(name)
                seq = latest.seq if latest is not None else 0
                snapshot = encode(
                    Snapshot(topic=name, seq=0, ts=None, state=NULL)
                    if latest is None
                    else Snapshot(topic=name, seq=latest.seq, ts=latest.ts, state=latest.state)
                )
            if since == seq:
                return self._json(name, b'"events":[]', headers)
            if since < seq <= since + MAX_REPLAY:
                broker = self.gateway.node.broker
                if broker is None:  # answered 503, as a failed read is
                    raise ConnectionError("not connected to NATS")
                found = await broker.fetch(name, since + 1, seq)
                if [envelope.seq for envelope in found] == list(range(since + 1, seq + 1)):
                    events = [encode(_event(name, envelope)) for envelope in found]
                    return self._json(name, b'"events":[' + b",".join(events) + b"]", headers)
            return self._json(name, b'"snapshot":' + snapshot, headers)

        return Deferred(later())

    def _json(self, name: str, field: bytes, headers: list[tuple[str, str]]) -> Response:
        body = b'{"topic":' + msgspec.json.encode(name) + b"," + field + b"}"
        response = _response(HTTPStatus.OK, body, "application/json")
        response.headers["Cache-Control"] = self.cache_control()
        for header, value in headers:
            response.headers[header] = value
        return response


def _event(name: str, envelope: Envelope) -> Event:
    return Event(
        topic=name, seq=envelope.seq, ts=envelope.ts, kind=envelope.kind, data=envelope.data
    )


def _payload(frame: bytes) -> bytes:
    """The JSON of one unmasked server text frame."""
    length = frame[1] & 0x7F
    return frame[2 + (2 if length == 126 else 8 if length == 127 else 0) :]
