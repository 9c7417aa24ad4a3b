"""``scorecast storm``: a connection storm past what one locust process reaches.

The parent spawns ``W`` worker processes (:mod:`loadtest.storm_worker`, one
uvloop loop each, up to ~15,000 sockets apiece under the 20,000-file limit),
publishes events at a fixed rate when asked (:mod:`loadtest.publisher`),
reads the gateways' ``/metrics`` once a second, prints one progress line a
second on stderr, and writes a JSON result (:mod:`loadtest.results`) that
``scorecast report`` draws.

Connections are spread over several source addresses in 127.0.0.0/8, each
bound with ``IP_BIND_ADDRESS_NO_PORT``, because one (source, destination)
pair has only ~28,000 ephemeral ports. Load goes to loopback only: any other
target is refused (:mod:`loadtest.storm_settings` checks the flags and builds
the workers' plan). The run is bounded: it ends ``--duration`` + ``--drain``
seconds after it starts, or at SIGINT/SIGTERM, and kills workers that do not
finish in time, and it stops early when the machine's available memory falls
below ``--min-available-mib``.

``--steps`` draws the cost curve in one run: the parent opens the ramp one
step at a time, holds each step ``--step-hold`` seconds, takes a memory point
(PSS of the gateway, nats-server and generator process trees, the kernel's
socket memory), publishes one goal on the topic every client holds and
waits for the workers to say how many got it and when the last one did
(:mod:`loadtest.storm_steps` has the arithmetic). A mass reconnect
(``--reconnect-at``) ends with the re-admission rate beside the first ramp's
fresh-connect rate.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import multiprocessing
import os
import platform
import signal
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

from scorecast.flags import Parser
from scorecast.loadtest.procstat import Machine, ProcessGroup
from scorecast.loadtest.results import StormResults
from scorecast.loadtest.scrape import scrape
from scorecast.loadtest.stack import checkout_revision
from scorecast.loadtest.storm_settings import (
    StormError,
    StormSettings,
    add_arguments,
    build_plan,
    check_settings,
    settings_from_args,
)
from scorecast.loadtest.storm_steps import curve, memory_point, reconnect_summary, role_of
from scorecast.loadtest.storm_worker import StepControl, StormPlan, worker_process
from scorecast.loadtest.zipf import ZipfTopics

__all__ = ["StormSettings", "add_arguments", "main", "run_storm"]

MEMORY_EVERY = 5  # seconds between memory points (PSS walks page tables: not every second)


def _machine() -> dict:
    memory = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory = int(line.split()[1]) * 1024
    return {
        "cpus": os.cpu_count(),
        "memory_bytes": memory,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "revision": _revision(),
    }


def _revision() -> str | None:
    """The checkout's commit (+ "-dirty" with uncommitted changes): which gateway
    a result measured. None outside a git checkout."""
    commit, changed = checkout_revision()
    return commit and commit + ("-dirty" if changed else "")


class _Run:
    """One storm: worker processes, their reports, the publisher and the scraper."""

    def __init__(self, settings: StormSettings, plan: StormPlan, log: TextIO) -> None:
        self.settings = settings
        self.plan = plan
        self.log = log
        self.results = StormResults(plan.connections, plan.workers)
        self.context = multiprocessing.get_context("spawn")
        self.queue = self.context.Queue()
        self.start = self.context.Event()
        self.stop = self.context.Event()
        self.t0 = self.context.Value("d", 0.0)
        self.control = StepControl(
            self.context.Value("q", 0 if plan.steps else plan.connections),
            self.context.Value("d", 0.0),
            self.context.Value("q", 0),
        )
        self.reached: dict[int, dict[int, dict]] = {}  # step -> worker -> report
        self.goals: dict[int, dict[int, dict]] = {}  # goal seq -> worker -> report
        self.readmitted: dict[int, dict] = {}  # worker -> report
        self.up: dict[int, int] = {}  # worker -> subscribed clients at its last tick
        self.steps: list[dict] = []
        self.memory: list[dict] = []
        self.baseline: dict | None = None
        self.gateway_connections: float | None = None
        self.processes: list = []
        self.inbox: asyncio.Queue[dict] = asyncio.Queue()
        self.reported: dict[int, int] = {}  # second -> workers that sent it
        self.scrape_targets = sorted({(t.host, t.port) for t in plan.targets})
        self.groups: dict[str, Machine | ProcessGroup] = {
            "machine": Machine(),
            "generator": ProcessGroup([os.getpid()]),
        }
        if settings.watch_pids:
            self.groups["server"] = ProcessGroup(list(settings.watch_pids))
        # the memory points split the watched servers: gateways and nats-server
        self.roles: dict[str, ProcessGroup] = {}
        for pid in settings.watch_pids:
            role = role_of(pid)
            group = self.roles.setdefault(role, ProcessGroup([]))
            group.roots.add(pid)
        self.roles["generator"] = ProcessGroup([os.getpid()])

    def say(self, line: str) -> None:
        if not self.settings.quiet:
            print(line, file=self.log, flush=True)

    def _pump(self, loop: asyncio.AbstractEventLoop) -> None:
        while True:
            message = self.queue.get()
            if message is None:
                return
            loop.call_soon_threadsafe(self.inbox.put_nowait, message)

    async def _scrape(self, timeout: float = 2.0) -> dict[str, float] | None:
        if not self.settings.scrape:
            return None
        total: dict[str, float] = {}
        try:
            for host, port in self.scrape_targets:
                for name, value in (await scrape(host, port, timeout)).items():
                    total[name] = total.get(name, 0.0) + value
        except (OSError, TimeoutError, ValueError) as error:
            self.say(f"storm: cannot read /metrics: {error!r}")
            return None
        self.gateway_connections = total.get("scorecast_connections")
        return total

    async def _until_ready(self) -> None:
        ready = 0
        async with asyncio.timeout(90):
            while ready < self.plan.workers:
                message = await self.inbox.get()
                if message["kind"] == "ready":
                    ready += 1
                elif message["kind"] == "failed":
                    raise RuntimeError(f"worker {message['worker']} failed: {message['error']}")

    async def _publish(self, loop: asyncio.AbstractEventLoop) -> None:
        import nats

        from scorecast.loadtest.publisher import FixedRatePublisher

        nc = await nats.connect(
            self.settings.nats, name="scorecast-storm", max_reconnect_attempts=5
        )
        try:
            plan = self.plan
            topics = ZipfTopics(plan.topics, plan.zipf, plan.prefix, plan.topic_first).names
            publisher = FixedRatePublisher(
                nc.jetstream(), topics, self.settings.publish_rate, self.settings.seed
            )
            await publisher.prepare(self.settings.stream_history)
            await asyncio.sleep(max(0.0, self.t0.value - time.time()))
            try:
                await publisher.run(
                    self.plan.duration, self.results.add_published, stopped=self.stop.is_set
                )
            finally:
                self.results.publisher = {
                    "published": publisher.published,
                    "errors": publisher.errors,
                }
        finally:
            await nc.close()

    async def _watch(self, loop: asyncio.AbstractEventLoop) -> None:
        """One progress line and one /metrics read per second, until the end.

        The /metrics read and the memory point run beside the loop: a gateway
        of many busy workers may answer late, and PSS of some 60 processes
        takes a moment; neither holds up the per-second samples."""
        second = 0
        start = loop.time() + (self.t0.value - time.time())
        end = start + self.plan.duration + self.plan.drain
        scraping: asyncio.Task | None = None
        measuring: asyncio.Task | None = None
        try:
            while loop.time() < end + 1:
                due = start + second + 1
                await asyncio.sleep(max(0.0, due - loop.time()))
                for name, group in self.groups.items():
                    sample = await asyncio.to_thread(group.sample)
                    self.results.add_processes(second, name, sample)
                    if name == "machine":
                        self._guard(sample)
                if second % MEMORY_EVERY == 0 and (measuring is None or measuring.done()):
                    measuring = loop.create_task(self._measure())
                if scraping is None or scraping.done():
                    scraping = loop.create_task(self._scrape_into(second))
                # wait a little for stragglers (and this second's /metrics), never long
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(max(0.0, due + 0.5 - loop.time())):
                        while self.reported.get(second, 0) < self.plan.workers or (
                            not scraping.done()
                        ):
                            await asyncio.sleep(0.02)
                self.say(self.results.progress(second))
                second += 1
        finally:
            for task in (scraping, measuring):
                if task is not None:
                    task.cancel()

    async def _scrape_into(self, second: int) -> None:
        samples = await self._scrape(timeout=5.0)
        if samples is not None:
            self.results.add_gateway(second, samples)

    async def _measure(self) -> None:
        self.memory.append(await self._memory_point())

    def _guard(self, sample: dict) -> None:
        """Stop the storm before the machine runs out of memory."""
        floor = self.settings.min_available_mib * 2**20
        available = sample.get("available_bytes")
        if floor and available is not None and available < floor and not self.stop.is_set():
            self.results.failures.append(
                f"stopped: the machine's available memory fell to {available / 2**30:.1f} GiB "
                f"(--min-available-mib {self.settings.min_available_mib})"
            )
            self.say("storm: " + self.results.failures[-1])
            self.stop.set()

    def _held(self) -> int:
        return sum(self.up.values())

    async def _cpu(self) -> dict[str, float]:
        """CPU seconds used so far by each role's processes."""

        def sample() -> dict[str, float]:
            return {role: group.sample()["cpu_seconds"] for role, group in self.roles.items()}

        return await asyncio.to_thread(sample)

    async def _memory_point(self) -> dict:
        point = await asyncio.to_thread(memory_point, self.roles, self._held())
        point["gateway_connections"] = self.gateway_connections
        return point

    async def _collect(self) -> None:
        finals = 0
        while finals + len(self.results.failures) < self.plan.workers:
            message = await self.inbox.get()
            self.results.add(message)
            kind = message["kind"]
            if kind == "tick":
                self.reported[message["second"]] = self.reported.get(message["second"], 0) + 1
                self.up[message["worker"]] = message["up"]
            elif kind == "final":
                finals += 1
            elif kind == "reached":
                self.reached.setdefault(message["step"], {})[message["worker"]] = message
                self.up[message["worker"]] = message["up"]
            elif kind == "goal":
                self.goals.setdefault(message["seq"], {})[message["worker"]] = message
            elif kind == "readmitted":
                self.readmitted[message["worker"]] = message

    async def _until(self, done, seconds: float) -> bool:
        """Wait until ``done()`` (polled), the stop, or ``seconds``; whether done."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while not done():
            if self.stop.is_set() or loop.time() > deadline:
                return False
            await asyncio.sleep(0.05)
        return True

    async def _steps(self) -> None:
        """The cost curve: each step opened, held, measured, and one goal timed."""
        import nats
        from nats.js.errors import NotFoundError

        from scorecast.protocol import STREAM_NAME
        from scorecast.protocol.envelope import encode_envelope, message_id
        from scorecast.protocol.topics import subject_for
        from scorecast.publishers.stream import ensure_stream

        plan, settings, control = self.plan, self.settings, self.control
        topic = plan.goal_topic
        assert topic is not None
        nc = await nats.connect(settings.nats, name="scorecast-storm-steps")
        try:
            js = nc.jetstream()
            await ensure_stream(js, history=settings.stream_history)
            try:
                last = await js.get_last_msg(STREAM_NAME, subject_for(topic))
                seq = int(json.loads(last.data or b"{}").get("seq", 0))
            except NotFoundError:
                seq = 0
            await asyncio.sleep(max(0.0, self.t0.value - time.time()))
            previous = 0
            for step in plan.steps:
                if self.stop.is_set():
                    break
                cpu = await self._cpu()
                began = time.time()
                control.step_wall.value = began
                control.allowed.value = step
                budget = (step - previous) / plan.rate * 4 + 120
                reached = await self._until(
                    lambda step=step: len(self.reached.get(step, {})) >= plan.workers, budget
                )
                ended = time.time()
                if reached:
                    ended = max(m["at"] for m in self.reached[step].values())
                held_cpu = await self._cpu()
                held_at = time.time()
                record: dict = {
                    "step": step,
                    "reached": reached,
                    "seconds": round(ended - began, 2),
                    "handshakes_per_second": round((step - previous) / (ended - began), 1),
                    # CPU of each role per connection added (handshake, subscribe,
                    # snapshots, and whatever else ran meanwhile: heartbeats)
                    "cpu_ms_per_handshake": {
                        role: round((held_cpu[role] - cpu[role]) / (step - previous) * 1000, 3)
                        for role in held_cpu
                    },
                }
                rate = record["handshakes_per_second"]
                self.say(f"storm: step {step:,} {'reached' if reached else 'NOT reached'} "
                         f"in {ended - began:.1f} s ({rate:,}/s)")  # fmt: skip
                await self._until(lambda: False, settings.step_hold)
                if self.stop.is_set():
                    self.steps.append(record)
                    break
                cpu = await self._cpu()
                record["holding_cores"] = {  # CPU while the step is held: heartbeats, sweeps
                    role: round((cpu[role] - held_cpu[role]) / (time.time() - held_at), 3)
                    for role in cpu
                }
                record["memory"] = await self._memory_point()
                cpu = await self._cpu()
                seq += 1
                control.goal_seq.value = seq  # the workers look for it before it is sent
                await asyncio.sleep(0.25)  # they poll every 50 ms
                published = time.time()
                body = encode_envelope(topic, seq, published, "goal", {"step": step},
                                       {"goals": seq})  # fmt: skip
                await js.publish(subject_for(topic), body,
                                 headers={"Nats-Msg-Id": message_id(topic, seq)})  # fmt: skip
                await self._until(
                    lambda seq=seq: len(self.goals.get(seq, {})) >= plan.workers,
                    plan.goal_timeout + 5,
                )
                goal_cpu = await self._cpu()
                reports = list(self.goals.get(seq, {}).values())
                lasts = [r["last_at"] for r in reports if r["last_at"] is not None]
                firsts = [r["first_at"] for r in reports if r["first_at"] is not None]
                record["goal"] = {
                    "seq": seq,
                    "published_at": published,
                    "workers": len(reports),
                    "expected": sum(r["expected"] for r in reports),
                    "received": sum(r["received"] for r in reports),
                    "first_ms": round((min(firsts) - published) * 1000, 1) if firsts else None,
                    "last_ms": round((max(lasts) - published) * 1000, 1) if lasts else None,
                }
                delivered = record["goal"]["received"]
                if delivered:  # CPU per frame of the goal's fan-out (at /proc's 10 ms ticks)
                    record["goal"]["cpu_us_per_delivery"] = {
                        role: round((goal_cpu[role] - cpu[role]) / delivered * 1e6, 2)
                        for role in cpu
                    }
                goal = record["goal"]
                self.say(f"storm: step {step:,} goal reached {goal['received']:,} of "
                         f"{goal['expected']:,} in {goal['last_ms']} ms")  # fmt: skip
                self.steps.append(record)
                previous = step
            await self._until(lambda: False, plan.drain)
        finally:
            await nc.close()
            self.stop.set()  # the workers close their clients and report their totals

    async def run(self) -> dict:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, self.stop.set)
        for index in range(self.plan.workers):
            process = self.context.Process(
                target=worker_process, name=f"storm-worker-{index}", daemon=True,
                args=(self.plan, index, self.queue, self.start, self.t0, self.stop, self.control),
            )  # fmt: skip
            process.start()
            self.processes.append(process)
        pump = threading.Thread(target=self._pump, args=(loop,), daemon=True)
        pump.start()
        started_at = datetime.now(UTC).isoformat(timespec="seconds")
        machine = _machine()  # at the start: the revision the servers were started from
        try:
            await self._until_ready()
            self.results.gateway_before = await self._scrape()
            self.baseline = await self._memory_point()
            publisher = stepper = None
            self.t0.value = time.time() + 1.0
            if self.settings.publish_rate > 0:
                publisher = loop.create_task(self._publish(loop))
            if self.plan.steps:
                stepper = loop.create_task(self._steps())
            elif not self.settings.quiet:
                self.say("storm: publishing nothing (--publish-rate 0): events come from the "
                         "running publishers (scorecast dev's simulator)"
                         if self.settings.publish_rate == 0 else
                         f"storm: publishing {self.settings.publish_rate:g} events a second "
                         f"to {self.settings.nats}")  # fmt: skip
            self.start.set()
            self.say(f"storm: {self.plan.connections:,} connections, {self.plan.workers} "
                     f"workers, {len(self.plan.sources)} sources, "
                     f"{len(self.plan.targets)} targets")  # fmt: skip
            watcher = loop.create_task(self._watch(loop))
            limit = self.plan.duration + self.plan.drain + 30
            try:
                async with asyncio.timeout(limit + 10):
                    await self._collect()
            except TimeoutError:
                self.results.failures.append("workers did not report their totals in time")
            watcher.cancel()
            if stepper is not None:
                try:
                    await stepper
                except Exception as error:
                    self.results.failures.append(f"steps: {error!r}")
            if publisher is not None:
                try:
                    await publisher
                except Exception as error:
                    self.results.failures.append(f"publisher: {error!r}")
            await asyncio.sleep(0.5)  # let the gateways count the closes
            for _attempt in range(3):  # a gateway still busy with the closes answers late
                self.results.gateway_after = await self._scrape(timeout=10.0)
                if self.results.gateway_after is not None or not self.settings.scrape:
                    break
        finally:
            self.stop.set()
            self.queue.put(None)
            for process in self.processes:
                await loop.run_in_executor(None, process.join, 5)
                if process.is_alive():
                    process.kill()
                    process.join()
        settings = dataclasses.asdict(self.settings)
        plan = self.plan
        settings.update(workers=plan.workers, sources=list(plan.sources),
                        connections=plan.connections, goal_topic=plan.goal_topic)  # fmt: skip
        document = self.results.document(settings, machine, started_at)
        document["t0"] = self.t0.value  # wall clock of second 0 of the series
        document["memory"] = {"baseline": self.baseline, "points": self.memory}
        roles = tuple(name for name in ("gateway", "nats", "generator") if name in self.roles)
        if self.plan.steps:
            document["steps"] = {
                "points": self.steps,
                "curve": curve(self.baseline or {}, self.steps, roles),
            }
        reached = list(self.reached.get(self.plan.connections, {}).values())
        if self.plan.reconnect_at is not None:
            document["reconnect"] = reconnect_summary(
                self.t0.value, self.plan.connections, self.plan.rate, reached,
                list(self.readmitted.values()), document["series"], self.plan.reconnect_at,
                self.plan.workers,
            )  # fmt: skip
        return document


async def run_storm(settings: StormSettings, log: TextIO = sys.stderr) -> dict:
    """Run one storm; the result document (also written to ``settings.output``)."""
    plan = build_plan(settings)
    result = await _Run(settings, plan, log).run()
    output = Path(settings.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=1))
    if not settings.quiet:
        print(_summary(result, output), file=log, flush=True)
    return result


def _summary(result: dict, output: Path) -> str:
    totals, latency = result["totals"], result["latency"]
    delivery = latency["delivery"]
    lines = [
        f"storm: peak {totals['peak_connections']:,}/{totals['connections_target']:,} "
        f"connections, {totals['events']:,} events "
        f"(live p50 {delivery['p50_ms']} ms, p99 {delivery['p99_ms']} ms; "
        f"{totals['catch_up']:,} caught up after reconnects), "
        f"{totals['errors_total']:,} errors",
        f"storm: gaps {totals['gaps']}, duplicates {totals['duplicates']}, "
        f"backwards {totals['backwards']}, drops {totals['drops']}, "
        f"connect failures {totals['connect_failures']}",
    ]
    if result["failures"]:
        lines.append("storm: FAILED: " + "; ".join(result["failures"]))
    lines.append(f"storm: result written to {output}")
    return "\n".join(lines)


def _broken(result: dict) -> bool:
    totals = result["totals"]
    ordering = sum(totals[name] for name in ("gaps", "duplicates", "backwards", "no_snapshot"))
    return bool(result["failures"]) or ordering > 0


def conntrack_room(connections: int, reconnect: bool) -> str | None:
    """Why the kernel's connection tracking cannot hold this storm, or None.

    Where netfilter's conntrack is loaded, every loopback connection takes an
    entry too (one per connection, both directions), and once the table is
    full new connections' SYNs are dropped: the ramp stalls with no error
    anywhere but the kernel log. A mass reconnect needs room for the cut
    connections' entries as well until they expire."""
    root = Path("/proc/sys/net/netfilter")
    try:
        most = int((root / "nf_conntrack_max").read_text())
        used = int((root / "nf_conntrack_count").read_text())
    except (OSError, ValueError):
        return None  # no conntrack: nothing to fill
    needed = connections * (2 if reconnect else 1)
    if used + needed <= most:
        return None
    return (
        f"the kernel tracks every loopback connection (nf_conntrack) and its table holds "
        f"{most:,} ({used:,} in use), too few for {needed:,} more: raise it "
        f"(sysctl -w net.netfilter.nf_conntrack_max={2 ** (used + needed).bit_length()}) or "
        "exempt loopback from tracking"
    )


def main(args: argparse.Namespace | list[str] | None = None) -> int:
    """Exit 0 after a clean storm, 1 when the guarantee broke, a worker failed or
    no connection was ever opened,
    2 on bad settings."""
    if isinstance(args, argparse.Namespace):
        namespace = args
    else:
        parser = add_arguments(Parser(prog="scorecast storm", description=__doc__))
        try:
            namespace = parser.parse_args(args)
        except SystemExit as usage:  # a usage error (one line on stderr) or --help
            return usage.code if isinstance(usage.code, int) else 2
    try:
        settings = settings_from_args(namespace)
        plan = check_settings(settings)
        full = conntrack_room(plan.connections, plan.reconnect_at is not None)
        if full is not None:
            raise StormError(full)
    except StormError as error:
        print(f"scorecast storm: {error}", file=sys.stderr)
        return 2
    try:
        import uvloop

        result = uvloop.run(run_storm(settings))
    except ImportError:  # pragma: no cover
        result = asyncio.run(run_storm(settings))
    if result["totals"].get("opened", 0) == 0:
        print("scorecast storm: no connection was ever opened", file=sys.stderr)
        return 1
    return 1 if _broken(result) else 0


if __name__ == "__main__":
    sys.exit(main())
