"""The floor of the benchmark: the least a server can do and still deliver.

A bare uvloop server, one ``asyncio.Protocol`` per connection and nothing
else. A client connects to ``/ws?topics=a,b`` (the naive server's URL, so
the generator's ``naive`` mode drives it); the server reads the request
head, answers ``101`` with the ``Sec-WebSocket-Accept`` it must compute and
one ``{"type":"subscribed"}`` frame, and from then on ignores what the
client sends. Each NATS message on ``committed.scores.<topic>`` becomes one
text frame, built once, and is handed to ``transport.write`` of every
connection on that topic: one write per client per event, no snapshot, no
sequence check, no buffering policy, no per-connection state besides the
topic list.

It is what scorecast's fan-out costs *at least* on this machine (the
kernel's ``send()`` per delivery dominates), so ``scorecast / floor`` is the
overhead that is scorecast's own. Its NATS side is the gateway's: nats-py
on ``committed.scores.>``, where the SCORES stream republishes what it
stored, so both get the same messages with the same headers at the same
moments (when JetStream stalls and then releases several events at once,
both see the bunch), and receiving costs both the same per event.

Run: ``python -m scorecast.loadtest.bench_floor --nats URL --port P``; prints
``ready`` once it listens and is subscribed.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from collections.abc import Callable, Coroutine
from typing import Any
from urllib.parse import parse_qs, urlsplit

import nats

from scorecast.protocol import COMMITTED_PREFIX
from scorecast.protocol.codec import accept_value, text_frame

__all__ = ["FloorConnection", "main", "serve_floor", "server_main"]

_MAX_HEAD = 8192
_SUBSCRIBED = text_frame(b'{"type":"subscribed"}')
_PREFIX = len(COMMITTED_PREFIX)  # committed.scores.<topic>


class FloorConnection(asyncio.Protocol):
    """One client: a handshake, then a member of its topics' audiences."""

    __slots__ = ("audience", "head", "topics", "transport")

    def __init__(self, audience: dict[str, set[asyncio.Transport]]) -> None:
        self.audience = audience
        self.head: bytes | None = b""  # None once upgraded
        self.topics: list[str] = []
        self.transport: asyncio.Transport  # from connection_made on

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if self.head is None:
            return  # after the upgrade nothing the client sends matters here
        self.head += data
        end = self.head.find(b"\r\n\r\n")
        if end < 0:
            if len(self.head) > _MAX_HEAD:
                self._refuse(b"431 Request Header Fields Too Large")
            return
        lines = self.head[:end].split(b"\r\n")
        self.head = None
        parts = lines[0].split(b" ")
        key = None
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"sec-websocket-key":
                key = value.strip()
        if len(parts) != 3 or parts[0] != b"GET" or not key:
            self._refuse(b"400 Bad Request")
            return
        query = parse_qs(urlsplit(parts[1].decode("latin-1")).query)
        self.topics = [topic for topic in query.get("topics", [""])[0].split(",") if topic]
        for topic in self.topics:
            self.audience.setdefault(topic, set()).add(self.transport)
        self.transport.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Accept: "
            + accept_value(key)
            + b"\r\n\r\n"
            + _SUBSCRIBED
        )

    def _refuse(self, status: bytes) -> None:
        self.head = None
        self.transport.write(b"HTTP/1.1 " + status + b"\r\nContent-Length: 0\r\n\r\n")
        self.transport.close()

    def connection_lost(self, exc) -> None:
        for topic in self.topics:
            members = self.audience.get(topic)
            if members is not None:
                members.discard(self.transport)
                if not members:
                    del self.audience[topic]


async def serve_floor(nats_url: str, host: str, port: int) -> None:
    audience: dict[str, set[asyncio.Transport]] = {}

    async def on_message(msg) -> None:
        transports = audience.get(msg.subject[_PREFIX:])
        if transports:
            frame = text_frame(msg.data)  # built once per event
            for transport in transports:
                transport.write(frame)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    nc = await nats.connect(nats_url)
    await nc.subscribe(
        COMMITTED_PREFIX + ">", cb=on_message, pending_msgs_limit=-1, pending_bytes_limit=-1
    )
    await nc.flush()
    server = await loop.create_server(
        lambda: FloorConnection(audience), host, port, backlog=4096, reuse_address=True
    )
    print("ready", flush=True)
    try:
        await stop.wait()
    finally:
        server.close()
        for transports in list(audience.values()):
            for transport in list(transports):
                transport.abort()
        await nc.close()


def server_main(serve: Callable[[str, str, int], Coroutine[Any, Any, None]], doc: str | None,
                argv: list[str] | None = None) -> None:  # fmt: skip
    """The command line of a comparison server: ``--nats URL [--host H] --port P``."""
    parser = argparse.ArgumentParser(description=(doc or "").splitlines()[0])
    parser.add_argument("--nats", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    import uvloop

    uvloop.run(serve(args.nats, args.host, args.port))


def main(argv: list[str] | None = None) -> None:
    server_main(serve_floor, __doc__, argv)


if __name__ == "__main__":
    main()
