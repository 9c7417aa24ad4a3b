"""``scorecast dev``: an embedded nats-server with JetStream in a temporary
store, one gateway and the match simulator, on loopback, stopped together on
Ctrl-C or SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import shutil
import signal
import tempfile

from gateway.server import Gateway
from gateway.settings import GatewaySettings
from publishers.simulator import run_simulator
from scorecast.natsserver import NatsServer

__all__ = ["run_dev"]


async def run_dev(args: argparse.Namespace) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    store = tempfile.mkdtemp(prefix="scorecast-dev-")
    nats_server = NatsServer(
        port=args.nats_port or None, store_dir=store, binary=args.nats_server_bin
    )
    nats_server.start()
    gateway = Gateway(
        GatewaySettings(nats=(nats_server.url,), host=args.host, port=args.port, node="dev")
    )
    try:
        await gateway.start()
        print(f"NATS:      {nats_server.url}", flush=True)
        print(f"WebSocket: ws://{args.host}:{gateway.port}/ws", flush=True)
        print(f"Page:      http://{args.host}:{gateway.port}/", flush=True)
        simulator = asyncio.create_task(
            run_simulator(
                nats_server.url,
                matches=args.matches,
                minute_seconds=args.minute_seconds,
                seed=None,
                history=1000,
                replicas=1,
                stop=stop,
            )
        )
        await stop.wait()
        await asyncio.wait_for(simulator, 10)
    finally:
        await gateway.stop()
        nats_server.stop()
        shutil.rmtree(store, ignore_errors=True)
