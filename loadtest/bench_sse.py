"""SSE beside WebSockets, and request coalescing, on one gateway process::

    python -m scorecast.loadtest.bench_sse [--connections 2000] [--events 100] [--cold 500]
    scorecast bench ... --sse-connections 2000     # the same, after the other scenarios

One run starts a nats-server (JetStream, the SCORES stream) and one
``scorecast gateway --workers 1`` process, then:

1. for each transport (``ws`` then ``sse``): opens N clients on one hot topic
   (bare sockets in this process), reads the gateway's RSS before and after
   (memory per connection), publishes M events and reads the gateway's CPU
   time until every client has all M (CPU per delivery = CPU / (N * M));
2. fires K concurrent ``GET /v1/topics/<topic>`` at a topic the gateway does
   not hold and reports the JetStream reads it took (the gateway's
   ``scorecast_http_jetstream_reads_total``) and the latency p50/p99.

Loopback only; every phase has a deadline; all processes are ended before it
returns. Prints a Markdown table; ``--json FILE`` writes the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import cast

import aiohttp
import nats
import orjson
from nats.js import JetStreamContext

from scorecast.loadtest.frames import TEXT, Handshake, client_frame
from scorecast.loadtest.procstat import ProcessGroup
from scorecast.loadtest.stack import metrics_of, spawn_gateway, stop_process, wait_ready
from scorecast.natsserver import NatsServer, free_port
from scorecast.protocol.envelope import encode_envelope, message_id
from scorecast.protocol.topics import subject_for
from scorecast.publishers.stream import ensure_stream

HOT = "bench.hot"
WS_MARK = b'"type":"event"'
SSE_MARK = b"event: event\n"


class Reader(asyncio.Protocol):
    """A client that counts event messages in what it reads."""

    def __init__(self, mark: bytes, request: bytes, subscribe: bytes | None) -> None:
        self.mark, self.request, self.subscribe = mark, request, subscribe
        self.events = 0
        self.ready = asyncio.get_running_loop().create_future()
        self.head = b""
        self.tail = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # create_connection() hands a stream transport; the base signature names
        # BaseTransport (uvloop's is no asyncio.Transport subclass: no isinstance)
        self.transport = cast(asyncio.Transport, transport)
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        if not self.ready.done():
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                return
            if not self.head.startswith((b"HTTP/1.1 101", b"HTTP/1.1 200")):
                self.ready.set_exception(ConnectionError(self.head[:80]))
                return
            if self.subscribe is not None and self.transport is not None:
                self.transport.write(self.subscribe)
            data, self.head = self.head[end + 4 :], b""
            self.ready.set_result(None)
        text = self.tail + data
        self.events += text.count(self.mark)
        self.tail = text[-(len(self.mark) - 1) :]

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.ready.done():
            self.ready.set_exception(ConnectionError("closed"))


async def open_clients(transport: str, port: int, count: int, sources: list[str]) -> list[Reader]:
    loop = asyncio.get_running_loop()
    host = f"127.0.0.1:{port}"
    if transport == "ws":
        request = Handshake(host).request
        subscribe = client_frame(
            TEXT, orjson.dumps({"type": "subscribe", "id": 1, "topics": [HOT]})
        )
        mark = WS_MARK
    else:
        request = f"GET /sse?topics={HOT} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
        subscribe, mark = None, SSE_MARK
    readers: list[Reader] = []

    async def one(index: int) -> None:
        sock = socket.socket()
        sock.setblocking(False)
        sock.bind((sources[index % len(sources)], 0))
        await loop.sock_connect(sock, ("127.0.0.1", port))
        _, reader = await loop.create_connection(
            lambda: Reader(mark, request, subscribe), sock=sock
        )
        await asyncio.wait_for(reader.ready, 30)
        readers.append(reader)

    for start in range(0, count, 200):  # 200 handshakes at a time
        await asyncio.gather(*(one(i) for i in range(start, min(count, start + 200))))
    return readers


async def publish(js: JetStreamContext, topic: str, first: int, count: int, pad: int) -> int:
    state = {"pad": "x" * pad}
    seq = first
    for seq in range(first, first + count):
        body = encode_envelope(topic, seq, time.time(), "bench", {"n": seq}, {**state, "n": seq})
        await js.publish(subject_for(topic), body, headers={"Nats-Msg-Id": message_id(topic, seq)})
        await asyncio.sleep(0.005)
    return seq


def metric(port: int, name: str) -> float:
    return metrics_of(port).get(name, 0.0)


async def measure_transport(
    transport: str,
    port: int,
    tree: ProcessGroup,
    js: JetStreamContext,
    args: argparse.Namespace,
    first_seq: int,
) -> tuple[dict, int]:
    sources = [f"127.0.0.{i}" for i in range(2, 10)]
    before_rss = tree.rss()
    readers = await open_clients(transport, port, args.connections, sources)
    await asyncio.sleep(1.0)  # snapshots delivered, buffers settled
    after_rss = tree.rss()
    cpu_before = tree.cpu()
    started = time.monotonic()
    last = await publish(js, HOT, first_seq, args.events, args.pad)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and any(r.events < args.events for r in readers):
        await asyncio.sleep(0.05)
    cpu = tree.cpu() - cpu_before
    seconds = time.monotonic() - started
    delivered = sum(min(r.events, args.events) for r in readers)
    for reader in readers:
        if reader.transport is not None:
            reader.transport.abort()
    await asyncio.sleep(1.0)
    figures = {
        "transport": transport,
        "connections": len(readers),
        "events": args.events,
        "delivered": delivered,
        "expected": len(readers) * args.events,
        "cpu_seconds": round(cpu.total, 3),
        "cpu_us_per_delivery": round(cpu.total / max(delivered, 1) * 1e6, 2),
        "user_us_per_delivery": round(cpu.user / max(delivered, 1) * 1e6, 2),
        "kib_per_connection": round((after_rss - before_rss) / max(len(readers), 1) / 1024, 1),
        "seconds": round(seconds, 2),
    }
    return figures, last + 1


async def measure_coalescing(port: int, js: JetStreamContext, count: int) -> dict:
    topic = "bench.cold"
    body = encode_envelope(topic, 1, time.time(), "bench", {"n": 1}, {"n": 1})
    await js.publish(subject_for(topic), body, headers={"Nats-Msg-Id": message_id(topic, 1)})
    reads_before = metric(port, "scorecast_http_jetstream_reads_total")
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    latencies: list[float] = []
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one() -> int:
            started = time.monotonic()
            async with session.get(f"http://127.0.0.1:{port}/v1/topics/{topic}") as answer:
                await answer.read()
                latencies.append(time.monotonic() - started)
                return answer.status

        statuses = await asyncio.gather(*(one() for _ in range(count)))
    reads = metric(port, "scorecast_http_jetstream_reads_total") - reads_before
    latencies.sort()
    return {
        "requests": count,
        "ok": sum(1 for status in statuses if status == 200),
        "jetstream_reads": int(reads),
        "p50_ms": round(statistics.median(latencies) * 1000, 1),
        "p99_ms": round(latencies[int(len(latencies) * 0.99) - 1] * 1000, 1),
    }


async def measure(connections: int, events: int, cold: int, pad: int = 100) -> dict:
    """The figures, as ``scorecast bench --sse-connections N`` reports them."""
    args = argparse.Namespace(connections=connections, events=events, cold=cold, pad=pad)
    return await run(args)


async def run(args: argparse.Namespace) -> dict:
    store = tempfile.mkdtemp(prefix="scorecast-bench-sse-")
    server = NatsServer(store_dir=store, log_file=str(Path(store) / "nats.log"))
    server.start()
    port = free_port()
    limits = ["--soft-limit", str(4 * 1024 * 1024), "--hard-limit", str(64 * 1024 * 1024)]
    gateway = spawn_gateway(server.url, port, workers=1, extra=limits)
    nc = await nats.connect(server.url)
    try:
        js = nc.jetstream()
        await ensure_stream(js)
        await asyncio.to_thread(wait_ready, port, process=gateway, timeout=20)
        tree = ProcessGroup([gateway.pid])
        seq = await publish(js, HOT, 1, 1, args.pad) + 1
        transports = []
        for transport in ("ws", "sse"):
            figures, seq = await measure_transport(transport, port, tree, js, args, seq)
            transports.append(figures)
        return {
            "transports": transports,
            "coalescing": await measure_coalescing(port, js, args.cold),
        }
    finally:
        await nc.close()
        stop_process(gateway, timeout=10)
        server.stop()


def markdown(results: dict) -> str:
    lines = [
        "| transport | connections | deliveries | server CPU per delivery | of it user "
        "| server memory per connection |",
        "|---|---|---|---|---|---|",
    ]
    for f in results["transports"]:
        lines.append(
            f"| {f['transport']} | {f['connections']} | {f['delivered']} / {f['expected']} "
            f"| {f['cpu_us_per_delivery']} us | {f['user_us_per_delivery']} us "
            f"| {f['kib_per_connection']} KiB |"
        )
    c = results["coalescing"]
    lines += [
        "",
        "| concurrent snapshot requests, cold topic | answered 200 | JetStream reads | p50 | p99 |",
        "|---|---|---|---|---|",
        f"| {c['requests']} | {c['ok']} | {c['jetstream_reads']} | {c['p50_ms']} ms "
        f"| {c['p99_ms']} ms |",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m scorecast.loadtest.bench_sse", description=__doc__
    )
    parser.add_argument("--connections", type=int, default=2000, help="clients per transport")
    parser.add_argument("--events", type=int, default=100, help="events published per transport")
    parser.add_argument("--pad", type=int, default=100, help="bytes of padding in each state")
    parser.add_argument("--cold", type=int, default=500, help="concurrent cold snapshot requests")
    parser.add_argument("--json", metavar="FILE", help="write the figures as JSON here")
    args = parser.parse_args(argv)
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        results = asyncio.run(run(args))
    else:
        results = uvloop.run(run(args))
    print(markdown(results))
    if args.json:
        Path(args.json).write_text(orjson.dumps(results, option=orjson.OPT_INDENT_2).decode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
