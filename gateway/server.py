"""The listener: ``GET /ws`` upgrades to a client WebSocket; ``/healthz``,
``/readyz`` and ``/metrics`` answer plain HTTP on the same port."""

from __future__ import annotations

import asyncio
import logging
import signal
from http import HTTPStatus

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.http11 import Request, Response

from gateway.broker_nats import NatsBroker
from gateway.connection import serve_client
from gateway.node import Node
from gateway.settings import GatewaySettings

__all__ = ["Gateway", "run_gateway"]

log = logging.getLogger("scorecast.gateway")


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
