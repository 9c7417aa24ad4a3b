"""``GET /sse``: the same frames as ``/ws``, as Server-Sent Events.

A request ``/sse?topics=T1,T2[&since=T1:n,T2:m][&occupancy=1]`` (or a
``Last-Event-ID: T1:n,T2:m`` header, which wins over ``since``: it is what a
browser sends when it reconnects by itself) is admitted like a WebSocket
handshake, then the socket is handed from the WebSocket protocol to an
:class:`SseStream` (``transport.set_protocol``). To the node the stream is
one more connection: it subscribes through ``node.subscribe`` with ``since``,
so resumption is exactly that of ``/ws`` (memory, JetStream, or a snapshot),
and the slow-client policy, drain and token expiry apply unchanged.

The node hands every connection whole WebSocket frames. :func:`sse_entry`
turns one frame into SSE bytes (``event: <type>`` and ``data: <the same
JSON>``) once, kept in a bounded cache keyed by the frame's bytes and shared
by every SSE stream; per stream only the ``id:`` line is added to snapshots
and events: the cursor of all the stream's topics, ``T1:n,T2:m``.

Not sent on SSE: ``subscribed`` (there is no request to answer; forbidden
topics get an ``error`` each, the rest stream). A ping frame of the gateway's
heartbeat becomes a comment line. Ends of the stream: ``reconnect`` then the
end on drain; ``error`` ``slow_consumer`` for a client too slow even for
conflation; ``error`` ``unauthorized`` when the token expires.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING
from urllib.parse import parse_qs

import msgspec
from websockets.http11 import Request

from scorecast.gateway.auth import OPEN, Grant
from scorecast.gateway.outbox import Outbox
from scorecast.protocol import PROTOCOL_VERSION
from scorecast.protocol.codec import encode, error_payload, text_frame
from scorecast.protocol.errors import BadRequest, ClientError, CloseCode, Forbidden, Unauthorized
from scorecast.protocol.messages import Subscribe, Welcome
from scorecast.protocol.topics import is_valid_topic

if TYPE_CHECKING:
    from scorecast.gateway.connection import Client
    from scorecast.gateway.server import Gateway

__all__ = ["SseRequest", "SseStream", "parse_cursor", "sse_entry"]

CACHE_SIZE = 8192  # frames whose SSE bytes are kept (one per event, shared)
RETRY_MS = 1000  # the browser's reconnect delay, sent first
MAX_INPUT = 64 * 1024  # an SSE client has nothing to send; more than this is abuse
HEARTBEAT = b": heartbeat\n\n"


class _Head(msgspec.Struct):
    type: str = ""
    topic: str | None = None
    seq: int | None = None
    after_ms: int | None = None


_decode_head = msgspec.json.Decoder(_Head).decode

# what one frame becomes: (topic or None, seq, SSE bytes, the same with the
# id line of a stream of that one topic); topic None: no id line
Entry = tuple[str | None, int, bytes, bytes]
_SKIP: Entry = (None, 0, b"", b"")
_cache: dict[bytes, Entry] = {}
cache_stats = {"built": 0}


def sse_entry(frame: bytes, payload: bytes) -> Entry:
    """The SSE form of one WebSocket frame, built once and shared."""
    entry = _cache.get(frame)
    if entry is not None:
        return entry
    cache_stats["built"] += 1
    if frame[0] & 0x0F == 0x9:  # the heartbeat ping
        entry = (None, 0, HEARTBEAT, HEARTBEAT)
    else:
        try:
            head = _decode_head(payload)
        except msgspec.MsgspecError:
            head = _Head(type="message")
        if head.type == "subscribed":
            entry = _SKIP
        else:
            lines = payload.splitlines() or [b""]  # JSON may hold raw newlines
            data = b"".join(b"data: " + line + b"\n" for line in lines)
            body = b"event: " + head.type.encode() + b"\n" + data + b"\n"
            if head.type == "reconnect" and head.after_ms is not None:
                body = b"retry: %d\n" % max(head.after_ms, 1) + body
            if head.type in ("snapshot", "event") and head.topic is not None:
                seq = head.seq or 0
                single = b"id: %s:%d\n" % (head.topic.encode(), seq) + body
                entry = (head.topic, seq, body, single)
            else:
                entry = (None, 0, body, body)
    if len(_cache) >= CACHE_SIZE:
        _cache.clear()  # old events are not asked for again: start afresh
    _cache[frame] = entry
    return entry


def _frames(data: bytes) -> Iterator[tuple[bytes, bytes]]:
    """(frame, payload) for each unmasked server frame joined in ``data``."""
    size, position = len(data), 0
    while position < size:
        length = data[position + 1] & 0x7F
        start = position + 2
        if length == 126:
            length, start = int.from_bytes(data[start : start + 2]), start + 2
        elif length == 127:
            length, start = int.from_bytes(data[start : start + 8]), start + 8
        end = start + length
        frame = data if position == 0 and end == size else data[position:end]
        yield frame, data[start:end]
        position = end


def parse_cursor(text: str) -> dict[str, int]:
    """``T1:n,T2:m`` to positions; BadRequest when malformed."""
    positions: dict[str, int] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        topic, colon, seq = item.rpartition(":")
        if not colon or not is_valid_topic(topic) or not seq.isdigit():
            raise BadRequest(f"bad position {item[:60]!r}: want topic:seq")
        positions[topic] = int(seq)
    return positions


class SseRequest:
    """An admitted ``/sse`` request: what to subscribe once the socket is ours."""

    def __init__(self, topics: list[str], since: dict[str, int], occupancy: bool) -> None:
        self.topics, self.since, self.occupancy = topics, since, occupancy
        self.headers: list[tuple[str, str]] = []  # extra response headers (CORS)

    @classmethod
    def parse(cls, request: Request, max_topics: int | None) -> SseRequest:
        """The request's topics and positions; BadRequest saying why not."""
        query = parse_qs(request.path.partition("?")[2])
        wanted = [t.strip() for text in query.get("topics", []) for t in text.split(",")]
        topics = list(dict.fromkeys(t for t in wanted if t))
        if not topics:
            raise BadRequest("topics is missing or empty: /sse?topics=T1,T2")
        for topic in topics:
            if not is_valid_topic(topic):
                raise BadRequest(f"invalid topic {topic[:60]!r}")
        if max_topics is not None and len(topics) > max_topics:
            raise BadRequest(f"at most {max_topics} topics per request")
        since = parse_cursor(",".join(query.get("since", [])))
        last_event_id = request.headers.get("Last-Event-ID")
        if last_event_id:  # the browser's own resume: newer than the URL's since
            since.update(parse_cursor(last_event_id))
        flag = query.get("occupancy", ["0"])[0].lower()
        return cls(topics, since, flag in ("1", "true", "yes"))

    def start(self, client: Client) -> None:
        """Take the socket over from the WebSocket protocol and stream."""
        gateway, transport = client.gateway, client.transport
        assert transport is not None  # the request came in on it
        gateway.connections.discard(client)
        gateway.handshaking.discard(client)
        stream = SseStream(gateway, transport, client.grant, self.topics, self.since)
        transport.set_protocol(stream)
        gateway.connections.add(stream)
        stream.open(self, self.headers)


class SseStream(asyncio.Protocol):
    """One SSE client: what the node addresses, like a WebSocket Client."""

    __slots__ = (
        "closed",
        "closing_since",
        "cursor",
        "expiry",
        "gateway",
        "grant",
        "opened",
        "outbox",
        "received",
        "session",
        "started",
        "transport",
        "waiting",
    )

    def __init__(
        self,
        gateway: Gateway,
        transport: asyncio.Transport,
        grant: Grant = OPEN,
        topics: Sequence[str] = (),
        since: dict[str, int] | None = None,
    ) -> None:
        since = since or {}
        self.gateway = gateway
        self.transport = transport
        self.grant = grant
        self.outbox = Outbox()
        self.waiting: dict[str, int | None] = {}
        self.expiry: asyncio.TimerHandle | None = None
        self.session = secrets.token_hex(8)
        # each allowed topic's position, in request order; 0 until the topic's
        # first snapshot or replay (resuming from 0 asks for all: exact too)
        self.cursor: dict[str, int] = {
            topic: since.get(topic, 0) for topic in topics if grant.allows(topic)
        }
        self.started = time.monotonic()
        self.closing_since = 0.0
        self.opened = True
        self.closed = False
        self.received = 0

    @property
    def last_seen(self) -> float:
        """An SSE client never speaks: the heartbeat sweep must not close it
        for silence (a dead peer shows as unsent bytes: the slow-client policy)."""
        return time.monotonic()

    # --- what the node calls --------------------------------------------------

    def write(self, data: bytes) -> None:
        transport = self.transport
        if transport.is_closing():
            return
        cursor = self.cursor
        entry = _cache.get(data)  # the common case: one frame, shared by every stream
        if entry is not None:
            topic, seq, body, single = entry
            if topic is None or topic not in cursor:
                if body:
                    transport.write(body)
                return
            cursor[topic] = seq
            if len(cursor) == 1:  # the id line is the frame's own: shared bytes
                transport.write(single)
                return
        parts: list[bytes] = []
        for frame, payload in _frames(data):
            topic, seq, body, single = sse_entry(frame, payload)
            if topic is not None and topic in cursor:
                cursor[topic] = seq
                if len(cursor) == 1:
                    parts.append(single)
                    continue
                position = ",".join(f"{t}:{n}" for t, n in cursor.items())
                parts.append(b"id: " + position.encode() + b"\n")
            if body:
                parts.append(body)
        if parts:
            transport.write(b"".join(parts))

    def unsent(self) -> int:
        return self.transport.get_write_buffer_size()

    def close(self, code: int, reason: str) -> None:
        """End the response once what is owed went out; say why in an
        ``error`` where a WebSocket would have said it in the close code."""
        if self.closed:
            return
        owed = self.outbox.take()
        if owed:
            self.write(owed)
        error: ClientError | None = None
        if code == CloseCode.SLOW_CONSUMER:
            error = ClientError(reason)
            error.code = "slow_consumer"
        elif code == CloseCode.TOKEN_EXPIRED:
            error = Unauthorized(reason)
        if error is not None:
            self.write(text_frame(error_payload(error)))
        self.closed = True
        self.closing_since = time.monotonic()
        self.gateway.closing.add(self)  # aborted by the sweep if never drained
        self.transport.close()

    # --- asyncio.Protocol -----------------------------------------------------

    def open(self, request: SseRequest, headers: list[tuple[str, str]]) -> None:
        head = [
            "HTTP/1.1 200 OK",
            "Content-Type: text/event-stream; charset=utf-8",
            "Cache-Control: no-cache, no-store",
            "Connection: close",
            "X-Accel-Buffering: no",
            *(f"{name}: {value}" for name, value in headers),
        ]
        self.transport.write(
            ("\r\n".join(head) + "\r\n\r\n").encode() + b"retry: %d\n\n" % RETRY_MS
        )
        gateway = self.gateway
        node, settings = gateway.node, gateway.settings
        node.connect(self)
        welcome = Welcome(
            protocol=PROTOCOL_VERSION,
            session=self.session,
            node=settings.node,
            heartbeat=settings.heartbeat,
        )
        node.send(self, text_frame(encode(welcome)))
        for topic in request.topics:
            if topic not in self.cursor:
                node.send_error(self, Forbidden(f"not allowed: {topic}"))
        allowed = list(self.cursor)
        if not allowed:
            return
        since = {topic: n for topic, n in request.since.items() if topic in self.cursor}
        subscribe = Subscribe(id=0, topics=allowed, since=since or None)
        try:
            node.subscribe(self, subscribe)
        except ClientError as error:
            node.send_error(self, error)
            return
        if request.occupancy:
            gateway.occupancy.watch(self, allowed)

    def data_received(self, data: bytes) -> None:
        self.received += len(data)
        if self.received > MAX_INPUT:
            self.transport.abort()

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.gateway.connection_lost(self)
