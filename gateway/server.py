"""The listener: ``GET /ws`` upgrades to a client WebSocket; ``/healthz``,
``/readyz`` and ``/metrics`` answer plain HTTP on the same port."""

from __future__ import annotations

import asyncio
import logging
import signal
from http import HTTPStatus
from pathlib import Path

from prometheus_client.exposition import CONTENT_TYPE_LATEST
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from gateway.broker_nats import NatsBroker
from gateway.connection import serve_client
from gateway.metrics import render
from gateway.node import Node
from gateway.settings import GatewaySettings

__all__ = ["Gateway", "run_gateway"]

log = logging.getLogger("scorecast.gateway")


STATIC = Path(__file__).parent / "static"
STATIC_FILES = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/client.js": ("client.js", "text/javascript; charset=utf-8"),
    "/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/style.css": ("style.css", "text/css; charset=utf-8"),
}


def _response(
    status: HTTPStatus, body: bytes, content_type: str, cache: str | None = None
) -> Response:
    headers = Headers([("Content-Type", content_type), ("Content-Length", str(len(body)))])
    if cache is not None:
        headers["Cache-Control"] = cache
    return Response(status.value, status.phrase, headers, body)


class Gateway:
    """One node's listener. ``start()`` connects to NATS and listens."""

    def __init__(self, settings: GatewaySettings, *, sock=None) -> None:
        self.settings = settings
        self.node = Node(settings)
        self.broker = NatsBroker(
            list(settings.nats),
            self.node.on_message,
            on_resync=self.node.resync,
            name=f"scorecast-gateway-{settings.node}",
        )
        self.server: Server | None = None
        self._sock = sock
        # one source per worker process; gateway.workers replaces this for N > 1
        self.metric_sources = lambda: [self.node.figures()]

    @property
    def port(self) -> int:
        return self.server.sockets[0].getsockname()[1]

    async def start(self) -> None:
        await self.broker.connect()
        self.node.start(self.broker)
        listen = (
            {"sock": self._sock}
            if self._sock is not None
            else {
                "host": self.settings.host,
                "port": self.settings.port,
            }
        )
        self.server = await serve(
            self._handle,
            process_request=self._process_request,
            compression=None,
            max_size=self.settings.max_message_size,
            max_queue=4,
            write_limit=self.settings.soft_limit,
            ping_interval=self.settings.heartbeat,
            ping_timeout=self.settings.heartbeat,
            close_timeout=5,
            server_header=None,
            **listen,
        )
        log.info("gateway %s listening on %s", self.settings.node, self.port)

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close(close_connections=True)
            await self.server.wait_closed()
        await self.node.stop()
        await self.broker.close()

    async def _handle(self, ws: ServerConnection) -> None:
        await serve_client(self.node, ws)

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        path = request.path.partition("?")[0]
        if path == "/ws":
            return None
        if path == "/metrics":
            return _response(HTTPStatus.OK, render(self.metric_sources), CONTENT_TYPE_LATEST)
        if path in STATIC_FILES and request.headers.get("Upgrade") is None:
            name, content_type = STATIC_FILES[path]
            body = (STATIC / name).read_bytes()
            return _response(HTTPStatus.OK, body, content_type, "no-cache")
        if path == "/healthz":
            return connection.respond(HTTPStatus.OK, "ok\n")
        if path == "/readyz":
            if self.node.ready:
                return connection.respond(HTTPStatus.OK, "ready\n")
            reason = "draining" if self.node.draining else "not connected to NATS"
            return connection.respond(HTTPStatus.SERVICE_UNAVAILABLE, reason + "\n")
        return connection.respond(
            HTTPStatus.NOT_FOUND, "not found: the WebSocket endpoint is /ws\n"
        )


async def run_gateway(settings: GatewaySettings, stop: asyncio.Event | None = None) -> None:
    """Serve until ``stop`` is set or SIGTERM/SIGINT arrives."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    gateway = Gateway(settings)
    await gateway.start()
    try:
        await stop.wait()
    finally:
        await gateway.stop()
