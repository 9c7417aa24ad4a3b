"""The listener: ``GET /ws`` upgrades to a client WebSocket; ``/healthz``,
``/readyz``, ``/metrics`` and the live-scores page answer plain HTTP on the
same port. Handshakes are admitted or refused here, before any WebSocket
state exists (see :meth:`Gateway.admit`)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import logging
import resource
import signal
import time
from collections.abc import Iterable
from http import HTTPStatus
from pathlib import Path
from typing import Any, Protocol, TypeVar
from urllib.parse import parse_qs

from prometheus_client.exposition import CONTENT_TYPE_LATEST
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from scorecast.gateway.admission import ConnectionRateLimiter, Refusal
from scorecast.gateway.broker_nats import NatsBroker
from scorecast.gateway.connection import PING_FRAME, Client
from scorecast.gateway.http_api import PREFIX as TOPICS_PREFIX
from scorecast.gateway.http_api import Deferred, TopicsApi, plain
from scorecast.gateway.metrics import render, render_transports
from scorecast.gateway.node import Node
from scorecast.gateway.occupancy_nats import OccupancyService
from scorecast.gateway.proxies import TrustedProxies
from scorecast.gateway.settings import GatewaySettings
from scorecast.gateway.sse import SseRequest, SseStream
from scorecast.gateway.sse import cache_stats as sse_cache_stats
from scorecast.gateway.workers import read_figures, write_figures
from scorecast.outage import OutageLog, wait_for_nats
from scorecast.protocol.errors import ClientError, CloseCode, Unauthorized

__all__ = ["Gateway", "PortUnavailable", "run_gateway"]

log = logging.getLogger("scorecast.gateway")

STATIC = Path(__file__).parent / "static"
STATIC_FILES = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/client.js": ("client.js", "text/javascript; charset=utf-8"),
    "/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/style.css": ("style.css", "text/css; charset=utf-8"),
}
FIGURES_INTERVAL = 1.0
SWEEP_INTERVAL = 1.0
BACKLOG = 4096
FILE_RESERVE = 200  # descriptors kept for refusals, NATS, metrics, files


def _response(
    status: HTTPStatus, body: bytes, content_type: str, cache: str | None = None
) -> Response:
    headers = Headers([("Content-Type", content_type), ("Content-Length", str(len(body)))])
    if cache is not None:
        headers["Cache-Control"] = cache
    return Response(status.value, status.phrase, headers, body)


def _descriptor_budget() -> int:
    """Connections a worker can hold when no limit is set: its open-file limit
    less a reserve, so that at the limit it still answers 503 (and /metrics,
    NATS, JetStream reads) instead of failing accept() with EMFILE."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 1_000_000
    return max(1, soft - FILE_RESERVE)


class Peer(Protocol):
    """A client socket the gateway holds: a WebSocket :class:`Client` or an
    :class:`SseStream` (which took the socket over from one)."""

    @property
    def transport(self) -> asyncio.Transport | None: ...
    @property
    def opened(self) -> bool: ...
    @property
    def closed(self) -> bool: ...
    @property
    def started(self) -> float: ...
    @property
    def closing_since(self) -> float: ...
    @property
    def last_seen(self) -> float: ...
    def write(self, data: bytes) -> None: ...
    def close(self, code: int, reason: str) -> None: ...


_P = TypeVar("_P", bound=Peer)


def _older(peers: Iterable[_P], before: float, attribute: str) -> list[_P]:
    return [peer for peer in peers if getattr(peer, attribute) < before]


def _abort(peer: Peer) -> None:
    if peer.transport is not None:  # None only before connection_made
        peer.transport.abort()


def _token(request: Request) -> str | None:
    _, _, query = request.path.partition("?")
    tokens = parse_qs(query).get("token")
    if tokens:
        return tokens[0]
    scheme, _, credentials = request.headers.get("Authorization", "").partition(" ")
    return credentials.strip() if scheme.lower() == "bearer" else None


class PortUnavailable(OSError):
    """The listen port cannot be bound (in use, privileged, no such address)."""

    def __init__(self, host: str, port: int, error: OSError) -> None:
        why = (error.strerror or str(error)).rsplit(": ", 1)[-1].lower()
        super().__init__(error.errno, f"cannot listen on {host}:{port}: {why}")
        self.host, self.port = host, port


class Gateway:
    """One node's listener. ``start()`` listens, then connects to NATS."""

    def __init__(self, settings: GatewaySettings) -> None:
        self.settings = settings
        self.node = Node(settings)
        self.broker = NatsBroker(
            list(settings.nats),
            self.node.on_message,
            on_resync=self.node.resync,
            stats=self.node.stats,
            on_stream_reset=self.node.stream_reset,
            name=f"scorecast-gateway-{settings.node}",
            auth=settings.nats_auth(),
            request_timeout=settings.nats_request_timeout,
            stream_check_interval=settings.stream_check_interval,
        )
        self.rate = ConnectionRateLimiter(
            settings.connections_per_second, settings.connections_per_ip_per_second
        )
        self.max_connections = settings.max_connections or _descriptor_budget()
        self.proxies = TrustedProxies(settings.trusted_proxies)
        self.server: asyncio.Server | None = None
        # every connection, and those still in their opening handshake
        self.connections: set[Peer] = set()
        self.handshaking: set[Client] = set()
        self.closing: set[Peer] = set()  # sent a close frame, awaiting the reply
        self._tasks: list[asyncio.Task[None]] = []
        # other transports (gateway.sse, gateway.http_api) and occupancy
        self.occupancy = OccupancyService(self.node, settings.node, settings.occupancy_interval)
        self.topics_api = TopicsApi(self)
        self.answering: set[asyncio.Task[Response]] = set()  # deferred HTTP answers in flight
        self.sse_resumes = 0  # SSE requests resuming with Last-Event-ID

    @property
    def port(self) -> int:
        if self.server is None:
            raise RuntimeError("the gateway is not listening: start() first")
        port: int = self.server.sockets[0].getsockname()[1]
        return port

    def metric_sources(self) -> list[dict[str, Any]]:
        own = self.node.figures()
        if self.settings.metrics_dir is None:
            return [own]
        return read_figures(self.settings.metrics_dir, own)

    async def start(self) -> None:
        """Listen, then connect to NATS (retrying until it answers: until then
        ``/readyz`` says 503 and subscribers wait for their snapshots)."""
        self.node.start(self.broker)
        if self.node.verifier is None:
            log.warning("no --jwt-secret or --jwt-public-key: the gateway is open to everyone")
        loop = asyncio.get_running_loop()
        try:
            self.server = await loop.create_server(
                lambda: Client(self),
                self.settings.host,
                self.settings.port,
                reuse_port=self.settings.reuse_port or None,
                backlog=BACKLOG,
            )
        except OSError as error:
            raise PortUnavailable(self.settings.host, self.settings.port, error) from None
        supervisor = self.node.supervisor  # restarts a loop that raises, counts it
        self._tasks.append(supervisor.loop("gateway sweep", self._sweep))
        self.occupancy.start()
        folder = self.settings.metrics_dir
        if folder is not None:
            publish = functools.partial(self._publish_figures, folder)
            self._tasks.append(supervisor.loop("figure publishing", publish))
        log.info("gateway %s listening on port %s", self.settings.node, self.port)
        # wait (quietly, cancellably) until a server answers, then connect;
        # nats-py reconnects by itself from then on
        outage = OutageLog(log, f"gateway {self.settings.node}", self.settings.nats)
        delay = 0.25
        while True:
            await wait_for_nats(self.settings.nats, outage)
            try:
                await self.broker.connect()
                return
            except Exception as exc:  # NoServersError, OSError, timeouts, auth
                outage.failed(exc)
                await self.broker.close()
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def drain(self) -> None:
        """SIGTERM: /readyz 503, no new handshakes, clients hinted away."""
        started, clients = time.monotonic(), len(self.node.clients)
        log.info(
            "draining",
            extra={"event": "drain", "connections": clients, "window": self.settings.drain_window},
        )
        await self.node.drain()
        log.info(
            "drained",
            extra={
                "event": "drained",
                "connections": clients,
                "left": len(self.node.clients),
                "seconds": round(time.monotonic() - started, 2),
            },
        )

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        if self.server is not None:
            self.server.close()
        for client in list(self.connections):
            client.close(CloseCode.GOING_AWAY, "gateway shutting down")
        for _ in range(20):  # give close handshakes a moment, then cut
            if not self.connections:
                break
            await asyncio.sleep(0.05)
        for peer in list(self.connections):
            _abort(peer)
        for answer in list(self.answering):
            answer.cancel()
        await self.node.stop()
        await self.occupancy.stop()
        await self.broker.close()

    # --- connections ----------------------------------------------------------

    def connection_made(self, client: Client) -> None:
        self.connections.add(client)
        self.handshaking.add(client)

    def connection_opened(self, client: Client) -> None:
        self.handshaking.discard(client)
        self.node.connect(client)

    def connection_lost(self, client: Peer) -> None:
        self.connections.discard(client)
        self.handshaking.discard(client)
        self.closing.discard(client)
        if client.opened:
            self.node.disconnect(client)

    async def _sweep(self) -> None:
        """Every second: handshake and close timeouts, and the keepalive of a
        share of the open connections, so that each is pinged once every
        ``heartbeat`` seconds: a connection that answered neither its previous
        ping nor anything else for two intervals is closed, the others get a
        ping. The pings are spread over the interval, not sent to everyone at
        once: at 18,000 connections a worker, a burst queued every ping and pong
        in the kernel at the same moment (2.2 GiB of TCP buffers at 480,000
        connections, past ``tcp_mem``) and blocked the loop."""
        settings = self.settings
        slices = max(1, round(settings.heartbeat / SWEEP_INTERVAL))
        turn: list[Peer] = []
        first_round_at = time.monotonic() + settings.heartbeat
        index, step = 0, 1
        previous_round_at = round_at = first_round_at
        while True:
            await asyncio.sleep(SWEEP_INTERVAL)
            now = time.monotonic()
            for client in _older(self.handshaking, now - settings.handshake_timeout, "started"):
                _abort(client)
            for peer in _older(self.closing, now - settings.close_timeout, "closing_since"):
                _abort(peer)
            if now < first_round_at:
                continue
            if index >= len(turn):  # a new round: every connection open now, in slices
                turn, index = list(self.connections), 0
                step = max(1, -(-len(turn) // slices))
                previous_round_at, round_at = round_at, now
            chunk, index = turn[index : index + step], index + step
            # silent since before its previous ping (sent in the previous round) and
            # for two intervals
            silent = min(previous_round_at, now - 2 * settings.heartbeat)
            for peer in chunk:
                if peer.opened and not peer.closed:
                    if peer.last_seen < silent:
                        peer.close(CloseCode.INTERNAL_ERROR, "keepalive ping timeout")
                    else:
                        peer.write(PING_FRAME)

    async def _publish_figures(self, folder: str) -> None:
        while True:
            write_figures(folder, self.node.figures())
            await asyncio.sleep(FIGURES_INTERVAL)

    # --- HTTP -------------------------------------------------------------------

    def route(self, client: Client, request: Request) -> Response | SseRequest | Deferred | None:
        """The answer to an HTTP request: a Response, None to accept a
        WebSocket, an SseRequest to stream Server-Sent Events on the socket,
        or a Deferred answer written once an await (a JetStream read) is done."""
        ws = client.ws
        path = request.path.partition("?")[0]
        if path == "/sse" or path.startswith(TOPICS_PREFIX):
            if "Access-Control-Request-Method" in request.headers:
                return self._preflight(request)
            if path == "/sse":
                return self._sse(client, request)
            return self._topics(client, request)
        if path == "/ws":
            refusal = self.admit(client, request)
            if refusal is None:
                return None
            self.node.stats.refuse(refusal.metric)
            response = ws.reject(refusal.status, refusal.reason + "\n")
            if refusal.retry_after is not None:
                response.headers["Retry-After"] = str(refusal.retry_after)
            return response
        if path == "/healthz":
            return ws.reject(HTTPStatus.OK, "ok\n")
        if path == "/readyz":
            if self.node.ready:
                return ws.reject(HTTPStatus.OK, "ready\n")
            reason = "draining" if self.node.draining else "not connected to NATS"
            return ws.reject(HTTPStatus.SERVICE_UNAVAILABLE, reason + "\n")
        if path == "/metrics":
            body = render(self.metric_sources) + render_transports(self.transport_figures())
            return _response(HTTPStatus.OK, body, CONTENT_TYPE_LATEST)
        if path in STATIC_FILES:
            name, content_type = STATIC_FILES[path]
            file = STATIC / name
            if file.exists():
                return _response(HTTPStatus.OK, file.read_bytes(), content_type, "no-cache")
        return ws.reject(HTTPStatus.NOT_FOUND, "not found: WebSockets are on /ws\n")

    def client_address(self, client: Client, request: Request) -> str:
        """The client's address: the TCP peer, or behind one of
        ``--trusted-proxies`` what its ``X-Forwarded-For`` says."""
        peer = client.transport.get_extra_info("peername")
        address = str(peer[0]) if peer else "?"
        if self.proxies:
            return self.proxies.client(address, request.headers.get_all("X-Forwarded-For"))
        return address

    # --- other transports (PROTOCOL.md section 3) ----------------------------

    def transport_figures(self) -> dict[str, int]:
        """This worker's SSE, HTTP snapshot and occupancy figures."""
        figures = {"sse_connections": sum(1 for c in self.connections if c.__class__ is SseStream)}
        figures.update(self.topics_api.figures(), **self.occupancy.figures())
        figures.update(sse_frames_built=sse_cache_stats["built"], sse_resumes=self.sse_resumes)
        return figures

    def _refused(self, refusal: Refusal) -> Response:
        self.node.stats.refuse(refusal.metric)
        return plain(refusal.status, refusal.reason, refusal.retry_after)

    def _cors(self, request: Request) -> list[tuple[str, str]]:
        origin = request.headers.get("Origin")
        if origin and self.settings.allowed_origins:
            return [("Access-Control-Allow-Origin", origin), ("Vary", "Origin")]
        return [("Access-Control-Allow-Origin", "*")]

    def _preflight(self, request: Request) -> Response:
        """A CORS preflight (a cross-origin fetch with Authorization or
        Last-Event-ID): allowed for the origins the gateway allows."""
        origin = request.headers.get("Origin")
        origins = self.settings.allowed_origins
        if origins and origin not in origins:
            return plain(HTTPStatus.FORBIDDEN, "origin not allowed")
        response = plain(HTTPStatus.NO_CONTENT, "")
        del response.headers["Content-Length"], response.headers["Content-Type"]
        response.body = b""
        for name, value in self._cors(request):
            response.headers[name] = value
        response.headers["Access-Control-Allow-Methods"] = "GET"
        response.headers["Access-Control-Allow-Headers"] = (
            "Authorization, Last-Event-ID, If-None-Match, Cache-Control"
        )
        response.headers["Access-Control-Max-Age"] = "600"
        return response

    def _browser_origin(self, request: Request, lenient: bool) -> Request:
        """Browsers send no Origin on a same-origin GET (EventSource, fetch):
        such a request is from the gateway's own origin, so it passes the
        origin check. ``lenient``: any request without Origin passes (a CDN
        or a server rendering a page is not a browser on another site)."""
        origins = self.settings.allowed_origins
        headers = request.headers
        if not origins or "Origin" in headers:
            return request
        if lenient or headers.get("Sec-Fetch-Site") == "same-origin":
            headers = headers.copy()
            headers["Origin"] = origins[0]
            return Request(request.path, headers)
        return request

    def _sse(self, client: Client, request: Request) -> Response | SseRequest:
        refusal = self.admit(client, self._browser_origin(request, lenient=False))
        if refusal is not None:
            return self._refused(refusal)
        settings = self.settings
        try:
            sse = SseRequest.parse(request, settings.max_topics_per_request)
        except ClientError as error:
            return plain(HTTPStatus.BAD_REQUEST, error.message)
        limit: int | None = settings.max_topics_per_connection  # None: no limit (the node's)
        if limit is not None and len(sse.topics) > limit:
            return plain(HTTPStatus.BAD_REQUEST, f"at most {limit} topics per connection")
        sse.headers = self._cors(request)
        if request.headers.get("Last-Event-ID"):
            self.sse_resumes += 1
        return sse

    def _topics(self, client: Client, request: Request) -> Response | Deferred:
        refusal = self.admit(client, self._browser_origin(request, lenient=True))
        if refusal is not None:
            return self._refused(refusal)
        return self.topics_api.answer(request, client.grant.allows, self._cors(request))

    def admit(self, client: Client, request: Request) -> Refusal | None:
        """Refuse a handshake with a status and a reason, or None to accept it.

        On success the token's grant is the connection's."""
        settings = self.settings
        if self.node.draining:
            return Refusal(HTTPStatus.SERVICE_UNAVAILABLE, "draining", "draining", 5)
        origins = settings.allowed_origins
        if origins and request.headers.get("Origin") not in origins:
            return Refusal(HTTPStatus.FORBIDDEN, "origin not allowed", "origin")
        if len(self.connections) > self.max_connections:  # sockets, this one included
            return Refusal(HTTPStatus.SERVICE_UNAVAILABLE, "at connection limit", "capacity", 5)
        address = self.client_address(client, request)
        refusal = self.rate.admit(address, time.monotonic())
        if refusal is not None:
            log.debug("handshake from %s refused: %s", address, refusal.reason)
            return refusal
        if self.node.verifier is not None:
            try:
                client.grant = self.node.verifier.verify(_token(request))
            except Unauthorized as error:
                return Refusal(HTTPStatus.UNAUTHORIZED, error.message, "unauthorized")
        return None


async def run_gateway(settings: GatewaySettings, stop: asyncio.Event | None = None) -> None:
    """Serve until SIGTERM (drain first) or SIGINT / ``stop`` (at once).

    The signal handlers are in place before anything else, so a gateway that
    is still waiting for NATS stops at once on either signal; a second
    SIGTERM during a drain stops at once too. A port that cannot be bound
    raises :class:`PortUnavailable`."""
    stop = stop or asyncio.Event()
    drain = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_sigterm() -> None:
        (stop if drain.is_set() else drain).set()

    loop.add_signal_handler(signal.SIGTERM, on_sigterm)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    gateway = Gateway(settings)
    waiters = [loop.create_task(stop.wait()), loop.create_task(drain.wait())]
    try:
        starting = loop.create_task(gateway.start())
        await asyncio.wait([starting, *waiters], return_when=asyncio.FIRST_COMPLETED)
        if not starting.done():  # signalled while waiting for NATS: nothing to drain
            starting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await starting
            return
        starting.result()  # a port that cannot be bound raises here
        # Connections make many small objects that live long: with the default
        # thresholds the cyclic collector runs every few hundred handshakes and
        # walks them all (measured: ~20 % of the CPU of a connection storm).
        # A closed connection does not wait for it: Client.connection_lost breaks
        # the one cycle it had (websockets' parser), so reference counting frees
        # it at once (docs/RELIABILITY.md: RSS back to baseline after 6,000 churns).
        gc.freeze()
        gc.set_threshold(50_000, 20, 100)
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        if drain.is_set() and not stop.is_set():
            draining = loop.create_task(gateway.drain())
            await asyncio.wait([draining, waiters[0]], return_when=asyncio.FIRST_COMPLETED)
            draining.cancel()
    finally:
        for waiter in waiters:
            waiter.cancel()
        try:
            await gateway.stop()
        except Exception as error:  # e.g. nats-py closing a connection NATS already cut
            log.warning("gateway %s: stopping: %r", settings.node, error)
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
