"""The naive server of the benchmark: what a few lines of ``websockets`` do.

A client connects to ``/ws?topics=a,b``; the server answers one
``{"type":"subscribed"}`` frame, then passes every NATS message of those
topics on with ``websockets.broadcast()``: the envelope's bytes as they
are, no snapshot, no ordering checks, no slow-client policy. It is the
baseline that shows what scorecast's own fan-out buys.

Run: ``python -m scorecast.loadtest.bench_naive --nats URL --port P``; prints
``ready`` once it listens and is subscribed.
"""

from __future__ import annotations

import asyncio
import signal
from collections import defaultdict
from urllib.parse import parse_qs, urlsplit

import nats
from nats.aio.msg import Msg
from websockets.asyncio.server import ServerConnection, broadcast, serve

from scorecast.loadtest.bench_floor import server_main

__all__ = ["main", "serve_naive"]


async def serve_naive(nats_url: str, host: str, port: int) -> None:
    audience: dict[str, set[ServerConnection]] = defaultdict(set)

    async def handler(ws: ServerConnection) -> None:
        assert ws.request is not None  # the handler runs once the handshake is done
        query = parse_qs(urlsplit(ws.request.path).query)
        topics = [topic for topic in query.get("topics", [""])[0].split(",") if topic]
        for topic in topics:
            audience[topic].add(ws)
        try:
            await ws.send('{"type":"subscribed"}')
            await ws.wait_closed()
        finally:
            for topic in topics:
                audience[topic].discard(ws)

    async def on_message(msg: Msg) -> None:
        clients = audience.get(msg.subject[len("scores.") :])
        if clients:
            broadcast(clients, msg.data.decode())

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    nc = await nats.connect(nats_url)
    await nc.subscribe("scores.>", cb=on_message)
    await nc.flush()
    async with serve(handler, host, port, compression=None):
        print("ready", flush=True)
        await stop.wait()
    await nc.close()


def main(argv: list[str] | None = None) -> None:
    server_main(serve_naive, __doc__, argv)


if __name__ == "__main__":
    main()
