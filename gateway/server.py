"""The listener: ``GET /ws`` upgrades to a client WebSocket; ``/healthz``,
``/readyz``, ``/metrics`` and the live-scores page answer plain HTTP on the
same port. Handshakes are admitted or refused here, before any WebSocket
state exists (see :meth:`Gateway.admit`)."""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from http import HTTPStatus
from pathlib import Path

from prometheus_client.exposition import CONTENT_TYPE_LATEST
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from gateway.admission import ConnectionRateLimiter, Refusal
from gateway.broker_nats import NatsBroker
from gateway.connection import serve_client
from gateway.metrics import render
from gateway.node import Node
from gateway.settings import GatewaySettings
from gateway.workers import read_figures, write_figures
from protocol.errors import Unauthorized

__all__ = ["Gateway", "run_gateway"]

log = logging.getLogger("scorecast.gateway")

STATIC = Path(__file__).parent / "static"
STATIC_FILES = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/client.js": ("client.js", "text/javascript; charset=utf-8"),
    "/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/style.css": ("style.css", "text/css; charset=utf-8"),
}
FIGURES_INTERVAL = 1.0


def _response(
    status: HTTPStatus, body: bytes, content_type: str, cache: str | None = None
) -> Response:
    headers = Headers([("Content-Type", content_type), ("Content-Length", str(len(body)))])
    if cache is not None:
        headers["Cache-Control"] = cache
    return Response(status.value, status.phrase, headers, body)


def _token(request: Request) -> str | None:
    _, _, query = request.path.partition("?")
    for pair in query.split("&"):
        name, _, value = pair.partition("=")
        if name == "token" and value:
            return value
    scheme, _, credentials = request.headers.get("Authorization", "").partition(" ")
    return credentials.strip() if scheme.lower() == "bearer" else None


class Gateway:
    """One node's listener. ``start()`` connects to NATS and listens."""

    def __init__(self, settings: GatewaySettings) -> None:
        self.settings = settings
        self.node = Node(settings)
        self.broker = NatsBroker(
            list(settings.nats),
            self.node.on_message,
            on_resync=self.node.resync,
            name=f"scorecast-gateway-{settings.node}",
        )
        self.rate = ConnectionRateLimiter(
            settings.connections_per_second, settings.connections_per_ip_per_second
        )
        self.server: Server | None = None
        self._figures: asyncio.Task[None] | None = None

    @property
    def port(self) -> int:
        return self.server.sockets[0].getsockname()[1]

    def metric_sources(self) -> list[dict]:
        own = self.node.figures()
        if self.settings.metrics_dir is None:
            return [own]
        return read_figures(self.settings.metrics_dir, own)

    async def start(self) -> None:
        """Listen, then connect to NATS (retrying until it answers: until then
        ``/readyz`` says 503 and subscribers wait for their snapshots)."""
        self.node.start(self.broker)
        if self.verifier_missing():
            log.warning("no --jwt-secret or --jwt-public-key: the gateway is open to everyone")
        self.server = await serve(
            self._handle,
            self.settings.host,
            self.settings.port,
            process_request=self._process_request,
            compression=None,
            max_size=self.settings.max_message_size,
            max_queue=4,
            write_limit=self.settings.soft_limit,
            open_timeout=self.settings.handshake_timeout,
            ping_interval=self.settings.heartbeat,
            ping_timeout=self.settings.heartbeat,
            close_timeout=5,
            server_header=None,
            reuse_port=self.settings.reuse_port,
        )
        if self.settings.metrics_dir is not None:
            self._figures = asyncio.get_running_loop().create_task(self._publish_figures())
        log.info("gateway %s listening on port %s", self.settings.node, self.port)
        delay = 0.25
        while True:
            try:
                await self.broker.connect()
                return
            except Exception as exc:  # NoServersError, OSError, timeouts
                log.warning("NATS at %s not reachable (%r); retrying", self.settings.nats, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    def verifier_missing(self) -> bool:
        return self.node.verifier is None

    async def drain(self) -> None:
        """SIGTERM: /readyz 503, no new handshakes, clients hinted away."""
        log.info("draining %d connections over %ss", len(self.node.clients),
                 self.settings.drain_window)  # fmt: skip
        await self.node.drain()

    async def stop(self) -> None:
        if self._figures is not None:
            self._figures.cancel()
        if self.server is not None:
            self.server.close(close_connections=True)
            await self.server.wait_closed()
        await self.node.stop()
        await self.broker.close()

    async def _publish_figures(self) -> None:
        while True:
            write_figures(self.settings.metrics_dir, self.node.figures())
            await asyncio.sleep(FIGURES_INTERVAL)

    async def _handle(self, ws: ServerConnection) -> None:
        await serve_client(self.node, ws)

    # --- HTTP -------------------------------------------------------------------

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        path = request.path.partition("?")[0]
        if path == "/ws":
            refusal = self.admit(connection, request)
            if refusal is None:
                return None
            self.node.stats.refuse(refusal.metric)
            response = connection.respond(refusal.status, refusal.reason + "\n")
            if refusal.retry_after is not None:
                response.headers["Retry-After"] = str(refusal.retry_after)
            return response
        if path == "/healthz":
            return connection.respond(HTTPStatus.OK, "ok\n")
        if path == "/readyz":
            if self.node.ready:
                return connection.respond(HTTPStatus.OK, "ready\n")
            reason = "draining" if self.node.draining else "not connected to NATS"
            return connection.respond(HTTPStatus.SERVICE_UNAVAILABLE, reason + "\n")
        if path == "/metrics":
            return _response(HTTPStatus.OK, render(self.metric_sources), CONTENT_TYPE_LATEST)
        if path in STATIC_FILES:
            name, content_type = STATIC_FILES[path]
            file = STATIC / name
            if file.exists():
                return _response(HTTPStatus.OK, file.read_bytes(), content_type, "no-cache")
        return connection.respond(HTTPStatus.NOT_FOUND, "not found: WebSockets are on /ws\n")

    def admit(self, connection: ServerConnection, request: Request) -> Refusal | None:
        """Refuse a handshake with a status and a reason, or None to accept it.

        On success the token's grant rides on the connection to the handler."""
        settings = self.settings
        if self.node.draining:
            return Refusal(HTTPStatus.SERVICE_UNAVAILABLE, "draining", "draining", 5)
        origins = settings.allowed_origins
        if origins and request.headers.get("Origin") not in origins:
            return Refusal(HTTPStatus.FORBIDDEN, "origin not allowed", "origin")
        limit = settings.max_connections
        if limit is not None and len(self.node.clients) >= limit:
            return Refusal(HTTPStatus.SERVICE_UNAVAILABLE, "at connection limit", "capacity", 5)
        address = connection.remote_address[0] if connection.remote_address else "?"
        refusal = self.rate.admit(address, time.monotonic())
        if refusal is not None:
            return refusal
        if self.node.verifier is not None:
            try:
                connection.grant = self.node.verifier.verify(_token(request))
            except Unauthorized as error:
                return Refusal(HTTPStatus.UNAUTHORIZED, error.message, "unauthorized")
        return None


async def run_gateway(settings: GatewaySettings, stop: asyncio.Event | None = None) -> None:
    """Serve until SIGTERM (drain first) or SIGINT / ``stop`` (at once)."""
    stop = stop or asyncio.Event()
    drain = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, drain.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    gateway = Gateway(settings)
    await gateway.start()
    try:
        waiters = [loop.create_task(stop.wait()), loop.create_task(drain.wait())]
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        for waiter in waiters:
            waiter.cancel()
        if drain.is_set() and not stop.is_set():
            await gateway.drain()
    finally:
        await gateway.stop()
