"""The four scenarios of ``scorecast bench``, each run against one server.

Every scenario starts a fresh server process, connects the generator fleet,
measures, closes the connections and stops the server, so no scenario pays
for another's leftovers. Server CPU is ``utime + stime`` of the server's
process tree over the measured window; memory is ``VmRSS`` before and after
the clients connected.

- ``hot``: every connection on one topic; ``events`` at ``hot_rate``, then
  ``burst_events`` published at once (what the server sustains when pushed).
- ``many``: each connection on ``topics_per_connection`` of ``topics``
  drawn with Zipf popularity; ``many_events`` spread evenly over the topics
  at ``many_rate``.
- ``idle``: connections subscribed to one quiet topic; memory per connection.
- ``storm``: connections opened as fast as the server takes them, each
  subscribing; connections per second until all are in, time to the first
  snapshot (nats: the ``PONG`` after ``SUB``; naive and floor: ``subscribed``).
- ``reconnect`` (scorecast only: the others have no ``since``): a storm of
  fresh connections on one topic, then all of them drop at once, events are
  stored meanwhile, and as many connections come back subscribing with
  ``since``, each ready once replayed to the head; admissions per second of
  both, and their ratio.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from scorecast.loadtest.bench_clients import Command
from scorecast.loadtest.bench_config import BenchConfig
from scorecast.loadtest.bench_fleet import Fleet
from scorecast.loadtest.bench_proc import CpuTimes, ProcessTree
from scorecast.loadtest.bench_publish import BenchPublisher
from scorecast.loadtest.bench_servers import Backbone
from scorecast.loadtest.histogram import LatencyHistogram
from scorecast.loadtest.zipf import ZipfTopics

__all__ = ["RUNNERS", "BenchContext"]

# seconds without any delivery after which a generator stops waiting (on a busy
# shared machine a server may stall for a second or two without losing anything)
QUIET = 5.0


@dataclass
class BenchContext:
    config: BenchConfig
    backbone: Backbone
    fleet: Fleet
    publisher: BenchPublisher
    workdir: Path


def _cpu(times: CpuTimes) -> dict:
    return {"user_s": round(times.user, 3), "system_s": round(times.system, 3)}


def _per(numerator: float, denominator: float, scale: float = 1.0, digits: int = 3):
    return round(numerator / denominator * scale, digits) if denominator else None


def _quantile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]


async def _open(
    ctx: BenchContext, server, plan: list[list[str]], window: int, resume: dict | None = None
) -> dict:
    """Connect one client per topic list; figures of the connecting itself.
    ``resume`` (topic -> since, head): subscribe with ``since``, ready at head."""
    fleet = ctx.fleet
    arguments = [
        {
            "mode": server.mode,
            "host": server.host,
            "port": server.port,
            "plan": share,
            "window": window,
            "timeout": ctx.config.open_timeout,
            **({"resume": resume} if resume else {}),
        }
        for share in fleet.split(plan)
    ]
    answers = await fleet.call(Command.OPEN, arguments)
    waits = [seconds for answer in answers for seconds in answer["ready_seconds"]]
    opened = sum(answer["opened"] for answer in answers)
    began = min(answer["began"] for answer in answers)
    ended = max(answer["ended"] for answer in answers)
    errors: Counter[str] = Counter()
    for answer in answers:
        errors.update(answer["errors"])
    return {
        "errors": dict(errors),
        "connections": len(plan),
        "opened": opened,
        "failed": sum(answer["failed"] for answer in answers),
        "seconds": round(ended - began, 3),
        "ready_p50_ms": _ms(_quantile(waits, 0.50)),
        "ready_p99_ms": _ms(_quantile(waits, 0.99)),
        "ready_max_ms": _ms(max(waits) if waits else None),
    }


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 2)


async def _connected(ctx: BenchContext, server, plan: list[list[str]], window: int) -> dict:
    """Start ``server``, record its memory, connect ``plan``; memory again."""
    await server.start()
    tree = ProcessTree(server.pid)
    rss_before = tree.rss()
    cpu_before, fleet_before = tree.cpu(), ctx.fleet.cpu()
    opening = await _open(ctx, server, plan, window)
    cpu_after, fleet_after = tree.cpu(), ctx.fleet.cpu()
    await asyncio.sleep(ctx.config.settle)  # subscriptions propagate (leaf nodes)
    rss_after = tree.rss()
    opened = opening["opened"]
    return {
        "open": opening,
        "open_cpu_us_per_connection": _per((cpu_after - cpu_before).total, opened, 1e6, 1),
        "open_generator_cpu_us_per_connection": _per(
            (fleet_after - fleet_before).total, opened, 1e6, 1
        ),
        "rss_before_mib": round(rss_before / 2**20, 1),
        "rss_after_mib": round(rss_after / 2**20, 1),
        "rss_per_connection_kib": _per(rss_after - rss_before, opened, 1 / 1024, 2),
    }


async def _finish(ctx: BenchContext, server) -> None:
    await ctx.fleet.call(Command.CLOSE)
    await server.stop()


async def _deliver(ctx: BenchContext, server, plan: list[list[str]], phases) -> dict:
    """Connect ``plan``, then per phase ``(prefix, events, rate)`` publish ``events``
    (one topic each) at ``rate`` and measure; phase figures are keyed ``prefix + name``."""
    try:
        figures = await _connected(ctx, server, plan, ctx.config.open_window)
        tree = ProcessTree(server.pid)
        for prefix, events, rate in phases:
            measured = await _measure(ctx, tree, events, rate)
            figures.update({prefix + key: value for key, value in measured.items()})
    finally:
        await _finish(ctx, server)
    return figures


async def _measure(ctx: BenchContext, tree: ProcessTree, events: list[str], rate: float):
    fleet = ctx.fleet
    published = dict(Counter(events))
    duration = len(events) / rate if rate > 0 else 0.0
    quiet = max(QUIET, 3.0 / rate) if rate > 0 else QUIET
    await fleet.call(Command.RESET)
    cpu_before, fleet_before, writes_before = tree.cpu(), fleet.cpu(), tree.write_calls()
    waiting = {"published": published, "deadline": duration + ctx.config.drain, "quiet": quiet}
    expecting = asyncio.ensure_future(fleet.call(Command.EXPECT, [waiting] * fleet.size))
    try:
        first_publish, last_publish = await ctx.publisher.run(events, rate)
    finally:
        answers = await expecting
    cpu, fleet_cpu = tree.cpu() - cpu_before, fleet.cpu() - fleet_before
    writes = tree.write_calls() - writes_before
    latency = LatencyHistogram()
    errors: Counter[str] = Counter()
    for answer in answers:
        latency.merge(answer["latency"])
        errors.update(answer["errors"])
    received = sum(answer["received"] for answer in answers)
    expected = sum(answer["expected"] for answer in answers)
    span = max(answer["last_at"] for answer in answers) - first_publish if received else 0.0
    summary = latency.summary()
    return {
        "events": len(events),
        "rate": rate,
        "publish_seconds": round(last_publish - first_publish, 3),
        "expected": expected,
        "delivered": received,
        "lost": expected - received,
        "waited_for": sorted({answer["ended"] for answer in answers}),
        "duplicates": sum(answer["duplicates"] for answer in answers),
        "gaps": sum(answer["gaps"] for answer in answers),
        "dropped_connections": sum(answer["dropped"] for answer in answers),
        "server_cpu": _cpu(cpu),
        "cpu_us_per_delivery": _per(cpu.total, received, 1e6),
        "write_calls": writes,
        # below 1: writes joined several frames (backlog or coalescing), not one per event
        "write_calls_per_delivery": _per(writes, received),
        "cpu_us_per_write_call": _per(cpu.total, writes, 1e6),
        "generator_cpu": _cpu(fleet_cpu),
        "generator_cpu_us_per_delivery": _per(fleet_cpu.total, received, 1e6),
        "deliveries_per_second": round(received / span) if span > 0 else None,
        "latency_p50_ms": summary["p50_ms"],
        "latency_p99_ms": summary["p99_ms"],
        "latency_max_ms": summary["max_ms"],
        "errors": dict(errors),
    }


async def run_hot(ctx: BenchContext, server) -> dict:
    config = ctx.config
    topic = f"hot.{server.name}.1"
    plan = [[topic]] * config.size("hot")
    phases = [("", [topic] * config.events, config.hot_rate)]
    if config.burst_events:
        phases.append(("burst_", [topic] * config.burst_events, 0.0))
    return await _deliver(ctx, server, plan, phases)


async def run_many(ctx: BenchContext, server) -> dict:
    config = ctx.config
    zipf = ZipfTopics(config.topics, config.zipf, prefix=f"many.{server.name}.")
    rng = random.Random(config.seed)  # the same draw for every server
    plan = [zipf.sample(config.topics_per_connection, rng) for _ in range(config.size("many"))]
    events = [zipf.name(index % config.topics + 1) for index in range(config.many_events)]
    figures = await _deliver(ctx, server, plan, [("", events, config.many_rate)])
    audience = Counter(topic for topics in plan for topic in topics)
    figures["most_popular_topic_connections"] = max(audience.values()) if audience else 0
    figures["subscriptions"] = sum(audience.values())
    return figures


async def run_idle(ctx: BenchContext, server) -> dict:
    config = ctx.config
    plan = [[f"idle.{server.name}.1"]] * config.size("idle")
    try:
        figures = await _connected(ctx, server, plan, config.open_window)
        tree = ProcessTree(server.pid)
        before = tree.cpu()
        await asyncio.sleep(1.0)
        figures["idle_cpu_percent"] = round((tree.cpu() - before).total * 100, 1)
    finally:
        await _finish(ctx, server)
    return figures


async def run_storm(ctx: BenchContext, server) -> dict:
    config = ctx.config
    topic = f"storm.{server.name}.1"
    await ctx.publisher.stored(topic)  # a snapshot with data to send
    plan = [[topic]] * config.size("storm")
    started = time.monotonic()
    try:
        figures = await _connected(ctx, server, plan, config.storm_window)
    finally:
        await _finish(ctx, server)
    opening = figures["open"]
    figures["connections_per_second"] = (
        round(opening["opened"] / opening["seconds"]) if opening["seconds"] else None
    )
    figures["wall_seconds"] = round(time.monotonic() - started, 2)
    return figures


async def run_reconnect(ctx: BenchContext, server) -> dict:
    config = ctx.config
    if server.mode != "scorecast":
        return {"skipped": "no since in this server's protocol"}
    topic = f"reconnect.{server.name}.1"
    await ctx.publisher.stored(topic)  # a snapshot with data to send
    plan = [[topic]] * config.size("reconnect")
    try:
        figures = await _connected(ctx, server, plan, config.storm_window)
        since = ctx.publisher.seqs[topic]  # what every fresh connection got
        await ctx.fleet.call(Command.CLOSE)  # all of them drop at once
        for _ in range(config.reconnect_missed):
            await ctx.publisher.stored(topic)
        head = ctx.publisher.seqs[topic]
        await asyncio.sleep(1.0)  # the gateway saw them go (and forgot the topic)
        tree = ProcessTree(server.pid)
        cpu_before, fleet_before = tree.cpu(), ctx.fleet.cpu()
        resumed = await _open(ctx, server, plan, config.storm_window, {topic: (since, head)})
        cpu, fleet_cpu = tree.cpu() - cpu_before, ctx.fleet.cpu() - fleet_before
    finally:
        await _finish(ctx, server)
    fresh = figures["open"]
    fresh_rate = round(fresh["opened"] / fresh["seconds"]) if fresh["seconds"] else None
    rate = round(resumed["opened"] / resumed["seconds"]) if resumed["seconds"] else None
    figures.update(
        connections_per_second=fresh_rate,
        resumed=resumed,
        resumed_connections_per_second=rate,
        resumed_to_fresh=_per(rate or 0, fresh_rate or 0, 1.0, 3),
        resumed_cpu_us_per_connection=_per(cpu.total, resumed["opened"], 1e6, 1),
        resumed_generator_cpu_us_per_connection=_per(fleet_cpu.total, resumed["opened"], 1e6, 1),
        missed=config.reconnect_missed,
    )
    return figures


RUNNERS = {
    "hot": run_hot,
    "many": run_many,
    "idle": run_idle,
    "storm": run_storm,
    "reconnect": run_reconnect,
}
