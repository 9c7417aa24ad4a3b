"""``scorecast dev``: an embedded nats-server with JetStream in a temporary
store, one gateway, the ingest endpoint and the match simulator, on loopback,
stopped together on Ctrl-C or SIGTERM.

Stopping goes in order: the simulator and ingest leave, then the gateway,
then nats-server (it runs in its own session, so the terminal's Ctrl-C does
not reach it first). nats-server also dies with this process when it is
killed outright (PR_SET_PDEATHSIG): no orphan keeps the NATS port.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
import tempfile

from scorecast.gateway.server import Gateway
from scorecast.gateway.settings import GatewaySettings
from scorecast.natsserver import NatsServer, check_free, free_port
from scorecast.publishers.ingest import run_ingest
from scorecast.publishers.settings import IngestSettings, PublisherSettings, SimulatorSettings
from scorecast.publishers.simulator import run_simulator
from scorecast.stack_settings import DevSettings

__all__ = ["run_dev"]


async def run_dev(settings: DevSettings) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    store = tempfile.mkdtemp(prefix="scorecast-dev-")
    nats_server = NatsServer(
        port=settings.nats_port or None,
        store_dir=store,
        binary=settings.nats_server_bin,
        die_with_parent=True,
    )
    gateway = Gateway(
        GatewaySettings(nats=(nats_server.url,), host=settings.host, port=settings.port, node="dev")
    )
    ingest_port = settings.ingest_port or free_port(settings.host)
    helpers: list[asyncio.Task] = []
    try:
        check_free(settings.host, ingest_port, "ingest")
        nats_server.start()
        starting = loop.create_task(gateway.start())
        stopped = loop.create_task(stop.wait())
        await asyncio.wait([starting, stopped], return_when=asyncio.FIRST_COMPLETED)
        stopped.cancel()
        if not starting.done():
            starting.cancel()
            await asyncio.wait([starting])
            return
        starting.result()  # a gateway port that cannot be bound raises here
        publisher = PublisherSettings(nats=(nats_server.url,))
        ingest = loop.create_task(
            run_ingest(publisher, IngestSettings(host=settings.host, port=ingest_port), stop=stop)
        )
        helpers.append(ingest)
        await _listening(ingest, settings.host, ingest_port, settings.ingest_ready_timeout)
        print(f"NATS:      {nats_server.url}", flush=True)
        print(f"WebSocket: ws://{settings.host}:{gateway.port}/ws", flush=True)
        print(f"Page:      http://{settings.host}:{gateway.port}/", flush=True)
        print(f"Ingest:    http://{settings.host}:{ingest_port}/v1/events", flush=True)
        helpers.append(
            loop.create_task(
                run_simulator(
                    publisher,
                    SimulatorSettings(
                        matches=settings.matches, minute_seconds=settings.minute_seconds
                    ),
                    stop=stop,
                )
            )
        )
        stopped = loop.create_task(stop.wait())
        await asyncio.wait([stopped, *helpers], return_when=asyncio.FIRST_COMPLETED)
        stopped.cancel()
        for helper in helpers:
            if helper.done() and not helper.cancelled():
                error = helper.exception()
                if error is not None:
                    raise error
    finally:
        stop.set()
        if helpers:
            _, late = await asyncio.wait(helpers, timeout=settings.stop_grace)
            for helper in late:
                helper.cancel()
            if late:
                await asyncio.wait(late)
        await gateway.stop()
        nats_server.stop()
        shutil.rmtree(store, ignore_errors=True)
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)


async def _listening(ingest: asyncio.Task, host: str, port: int, timeout: float) -> None:
    """Return once ingest answers ``/readyz`` with 200 (listening and connected
    to NATS), so the first POST to the printed URL is stored; its error if it
    failed first."""
    async with asyncio.timeout(timeout):
        while True:
            if ingest.done():
                ingest.result()  # raises the bind error
                raise RuntimeError("ingest stopped before it was ready")
            with contextlib.suppress(OSError):
                reader, writer = await asyncio.open_connection(host, port)
                try:
                    writer.write(f"GET /readyz HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
                    if b" 200 " in await reader.readline():
                        return
                finally:
                    writer.close()
            await asyncio.sleep(0.05)
