"""What durable feed ids cost: ``python -m scorecast.publishers.feed_ids_bench``.

Starts its own nats-server (loopback, file store in a temporary folder) and
prints, for a publisher storing events one after another as ingest does:

- the time per publish without feed ids, with feed ids (bucket lookup,
  publish, create-only bucket write) and the difference;
- the bucket's size on disk and nats-server's memory after ``--keys`` ids,
  per id, and both extrapolated to a realistic feed: ``--matches`` matches
  sending one event every ``--interval`` seconds, kept for the 48-hour TTL.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections.abc import Awaitable
from pathlib import Path

import nats
from nats.js.api import PubAck

from scorecast.natsserver import NatsServer
from scorecast.publishers.feed_ids import BUCKET, FEED_ID_TTL, FeedIds, key_for
from scorecast.publishers.stream import TopicPublisher, ensure_stream


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


async def _timed(
    publisher: TopicPublisher, count: int, topics: int, ids: str | None
) -> list[float]:
    times = []
    for n in range(count):
        topic = f"match.{n % topics}"
        feed_id = None if ids is None else f"{ids}-{n}"
        started = time.perf_counter()
        await publisher.publish(topic, "clock", {"minute": n}, feed_id=feed_id)
        times.append(time.perf_counter() - started)
    return times


def _describe(name: str, times: list[float]) -> str:
    ordered = sorted(times)
    p99 = ordered[int(len(ordered) * 0.99) - 1]
    return (
        f"{name:<22} mean {statistics.mean(times) * 1e3:6.3f} ms  "
        f"p50 {statistics.median(times) * 1e3:6.3f} ms  p99 {p99 * 1e3:6.3f} ms"
    )


async def run(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as folder:
        server = NatsServer(store_dir=folder).start()
        try:
            nc = await nats.connect(server.url)
            js = nc.jetstream()
            await ensure_stream(js, history=100)
            plain = TopicPublisher(nc)
            durable = TopicPublisher(nc, feed_ids=await FeedIds.open(js))
            await _timed(plain, 500, args.topics, None)  # warm up
            await _timed(durable, 500, args.topics, "warm")
            without = await _timed(plain, args.publishes, args.topics, None)
            with_ids = await _timed(durable, args.publishes, args.topics, "timed")
            print(f"{args.publishes} publishes one after another, over {args.topics} topics:")
            print(_describe("without feed ids", without))
            print(_describe("with durable feed ids", with_ids))
            extra = statistics.mean(with_ids) - statistics.mean(without)
            print(f"{'cost of a feed id':<22} {extra * 1e3:+.3f} ms per publish (mean)")

            process = server.process
            assert process is not None  # start() returned: it runs
            kv = await js.key_value(BUCKET)
            before_keys = (await js.stream_info(f"KV_{BUCKET}")).state
            rss_before = _rss_kib(process.pid)
            value = b'{"topic":"match.1234","seq":123,"ts":1764412345.123,"stream_seq":1234567}'
            pending: list[Awaitable[PubAck]] = []
            for n in range(args.keys):
                pending.append(js.publish(f"$KV.{BUCKET}.{key_for(f'fill-{n}')}", value))
                if len(pending) >= 500:
                    await asyncio.gather(*pending)
                    pending.clear()
            await asyncio.gather(*pending)
            await nc.flush()
            await asyncio.sleep(1.0)
            after = (await js.stream_info(f"KV_{BUCKET}")).state
            rss_written = _rss_kib(process.pid)
            await asyncio.sleep(args.settle)  # nats-server drops its block caches
            rss_after = _rss_kib(process.pid)
            keys = after.messages - before_keys.messages
            disk = (after.bytes - before_keys.bytes) / keys
            memory = (rss_after - rss_before) * 1024 / keys
            peak = (rss_written - rss_before) * 1024 / keys
            assert (await kv.get(key_for("fill-0"))).value == value
            per_48h = args.matches * FEED_ID_TTL / args.interval
            print(f"bucket after {keys} ids: {disk:.0f} B per id in the store, "
                  f"nats-server RSS +{peak:.0f} B per id just written, "
                  f"+{memory:.0f} B per id {args.settle:g} s later")  # fmt: skip
            print(
                f"at {args.matches} matches x 1 event / {args.interval:g} s, 48 h TTL: "
                f"{per_48h:,.0f} ids, {per_48h * disk / 2**20:,.0f} MiB store, "
                f"~{per_48h * memory / 2**20:,.0f} MiB nats-server memory (per replica)"
            )
            await nc.close()
        finally:
            server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--publishes", type=int, default=3000)
    parser.add_argument("--topics", type=int, default=50)
    parser.add_argument("--keys", type=int, default=100_000)
    parser.add_argument("--matches", type=int, default=50)
    parser.add_argument("--interval", type=float, default=10.0)
    parser.add_argument("--settle", type=float, default=20.0, help="seconds before the 2nd RSS")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
