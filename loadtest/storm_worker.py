"""One storm generator process: an asyncio (uvloop) loop holding many clients.

The parent (:mod:`loadtest.storm`) starts ``W`` of these with the same
:class:`StormPlan`. Worker ``w`` owns the clients whose global index ``i``
has ``i % W == w`` and opens client ``i`` at ``t0 + i / rate``, so the ramp
is one even stream across all workers. Client ``i`` goes to target
``i % len(targets)`` from source address ``(i // len(targets)) % len(sources)``,
which spreads connections evenly over (source, destination) pairs.

Timeline (seconds after ``t0``, the same wall-clock start for every worker):
ramp at ``rate``; at ``reconnect_at`` (if set) every open client is cut at
once and reconnects with ``since`` within ``reconnect_spread`` seconds; at
``duration + drain`` all clients close (1000) and the worker reports its
totals. Once a second it sends a tick (:meth:`Tally.tick`) to the parent.

With ``steps`` (the cost curve) the parent opens the ramp one step at a time
through a :class:`StepControl`: the worker opens its clients of the current
step at ``rate`` from the step's start, reports ``reached`` once they are all
subscribed, and when the parent announces a goal (``goal_seq``) it reports
how many of its subscribed clients received it and when the last one did.
Every client then also holds ``goal_topic``. After a mass reconnect the
worker reports ``readmitted`` once every client is subscribed again.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import random
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from scorecast.loadtest.client import StormClient, Target, raise_file_limit
from scorecast.loadtest.frames import HandshakeError, WebSocketError
from scorecast.loadtest.tally import Tally
from scorecast.loadtest.zipf import ZipfTopics

__all__ = ["StepControl", "StormPlan", "Worker", "worker_process"]

# how often a worker looks at the parent's shared values and its own counts:
# 34 workers polling is 700 wakeups a second, a few ms of CPU in all
POLL = 0.05
CUT_BATCH = 500  # clients a worker cuts before letting its loop run


@dataclass(frozen=True)
class StormPlan:
    targets: tuple[Target, ...]
    sources: tuple[str | None, ...]
    connections: int
    workers: int
    rate: float  # new connections per second, all workers together
    max_pending: int  # attempts in flight per worker
    topics: int
    topics_per_client: int
    zipf: float
    prefix: str
    seed: int
    duration: float
    drain: float
    reconnect_at: float | None
    reconnect_spread: float
    ping_interval: float
    connect_timeout: float
    topic_first: int = 1
    steps: tuple[int, ...] = ()
    goal_topic: str | None = None  # a topic every client holds (the steps' goals)
    goal_timeout: float = 60.0

    def route(self, index: int) -> tuple[Target, str | None]:
        target = self.targets[index % len(self.targets)]
        return target, self.sources[(index // len(self.targets)) % len(self.sources)]


def _reason(error: BaseException) -> str:
    if isinstance(error, HandshakeError):
        return f"handshake:{error.status or 'invalid'}"
    if isinstance(error, TimeoutError):
        return "connect:timeout"
    if isinstance(error, OSError) and error.errno:
        return f"connect:{errno.errorcode.get(error.errno, error.errno)}"
    return f"connect:{type(error).__name__}"


class _Value(Protocol):
    value: Any


class StepControl:
    """What the parent tells every worker during a stepped storm, in shared
    memory (``multiprocessing`` Values, or anything with a ``value``):
    ``allowed`` clients may be open (global indices below it), the step began
    at wall-clock ``step_wall``, and ``goal_seq`` is the goal to watch for."""

    def __init__(self, allowed: _Value, step_wall: _Value, goal_seq: _Value) -> None:
        self.allowed = allowed
        self.step_wall = step_wall
        self.goal_seq = goal_seq


class _Holder:
    """A plain ``value`` holder: a StepControl within one process (tests)."""

    def __init__(self, value: Any) -> None:
        self.value = value


def local_control(allowed: int = 0) -> StepControl:
    return StepControl(_Holder(allowed), _Holder(0.0), _Holder(0))


class _Goal:
    """The goal a worker watches for: its seq, and arrivals counted by the clients."""

    __slots__ = ("first", "last", "received", "seq", "topic")

    def __init__(self, topic: str) -> None:
        self.topic = topic
        self.seq = 0
        self.received = 0
        self.first: float | None = None
        self.last: float | None = None

    def arrived(self, at: float) -> None:
        self.received += 1
        if self.first is None:
            self.first = at
        self.last = at


class _GoalClient(StormClient):
    """A storm client that also notes when the watched goal reached it: one
    dict lookup per message on top of the parent class's work."""

    __slots__ = ("goal", "goal_seen")

    def __init__(self, topics: list[str], tally: Tally, goal: _Goal) -> None:
        super().__init__(topics, tally)
        self.goal = goal
        self.goal_seen = 0

    def _message(self, payload: bytes) -> None:
        StormClient._message(self, payload)
        goal = self.goal
        if goal.seq > self.goal_seen and self.positions.seqs.get(goal.topic, 0) >= goal.seq:
            self.goal_seen = goal.seq
            goal.arrived(time.time())


class Worker:
    def __init__(
        self,
        plan: StormPlan,
        index: int,
        t0: float,
        report: Callable[[dict], None],
        stopped: Callable[[], bool] = lambda: False,
        control: StepControl | None = None,
    ) -> None:
        self.plan = plan
        self.index = index
        self.t0 = t0
        self.report = report
        self.stopped = stopped
        self.tally = Tally()
        self.clients: list[StormClient] = []
        self.stopping = False
        self.rng = random.Random(plan.seed * 7919 + index)
        self.zipf = ZipfTopics(plan.topics, plan.zipf, plan.prefix, plan.topic_first)
        self.control = control or local_control(plan.connections)
        self.goal = _Goal(plan.goal_topic) if plan.goal_topic else None
        self._tasks: set[asyncio.Task] = set()
        self._pending = asyncio.Semaphore(plan.max_pending)

    def _spawn(self, coroutine) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def run(self) -> dict:
        loop = asyncio.get_running_loop()
        start = loop.time() + (self.t0 - time.time())  # t0 on this loop's clock
        end = start + self.plan.duration + self.plan.drain
        opener = loop.create_task(self._open_all(start))
        chores = [opener, loop.create_task(self._tick(start, end))]
        if self.plan.reconnect_at is not None:
            chores.append(loop.create_task(self._mass_reconnect(start + self.plan.reconnect_at)))
        if self.plan.ping_interval > 0:
            chores.append(loop.create_task(self._ping(start)))
        if self.goal is not None:
            chores.append(loop.create_task(self._watch_goals()))
        try:
            await chores[1]  # the ticker returns at the end (or on stop)
        finally:
            self.stopping = True
            for task in [*chores, *self._tasks]:
                task.cancel()
            await asyncio.gather(*chores, *self._tasks, return_exceptions=True)
        await self._close_all()
        self.tally.tick()  # folds the last partial second into the totals
        return self._final()

    # --- opening ---------------------------------------------------------------

    async def _open_all(self, start: float) -> None:
        """The ramp: every client at ``rate`` from ``start``, or with steps each
        step's clients at ``rate`` from when the parent opens that step."""
        loop = asyncio.get_running_loop()
        plan, control = self.plan, self.control
        base = 0
        for step in plan.steps or (plan.connections,):
            step_start = start
            if plan.steps:
                while control.allowed.value < step:
                    await asyncio.sleep(0.02)
                step_start = loop.time() + (control.step_wall.value - time.time())
            first = base + (self.index - base) % plan.workers
            for index in range(first, step, plan.workers):
                delay = step_start + (index - base) / plan.rate - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                self._open(index)
                await self._pending.acquire()  # a slow gateway slows the ramp, not piles SYNs up
                self._spawn(self._keep_trying(self.clients[-1], held=True))
            await self._until_all_up(step)
            base = step

    def _open(self, index: int) -> None:
        plan = self.plan
        topics = self.zipf.sample(plan.topics_per_client, self.rng)
        if self.goal is not None:
            client: StormClient = _GoalClient([*topics, self.goal.topic], self.tally, self.goal)
        else:
            client = StormClient(topics, self.tally)
        client.route = plan.route(index)
        client.on_lost = self._lost
        self.clients.append(client)

    async def _until_all_up(self, step: int) -> None:
        """Report ``reached`` once every client opened so far is subscribed (or
        stop waiting when the parent has moved on to the next step)."""
        while self.tally.up < len(self.clients):
            if self.control.allowed.value > step:
                return
            await asyncio.sleep(POLL)
        self.report({"kind": "reached", "worker": self.index, "step": step,
                     "at": time.time(), "up": self.tally.up})  # fmt: skip

    async def _watch_goals(self) -> None:
        """Each goal the parent announces: how many subscribed clients got it, and
        when the first and the last did (wall clock, as the envelope's ts)."""
        goal, control = self.goal, self.control
        assert goal is not None
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(POLL)
            seq = control.goal_seq.value
            if seq <= goal.seq:
                continue
            goal.seq, goal.received, goal.first, goal.last = seq, 0, None, None
            expected = self.tally.up
            now = time.time()
            for client in self.clients:  # any that got it before we looked
                unseen = isinstance(client, _GoalClient) and client.goal_seen < seq
                if unseen and client.positions.seqs.get(goal.topic, 0) >= seq:
                    client.goal_seen = seq  # type: ignore[attr-defined]
                    goal.arrived(now)
            deadline = loop.time() + self.plan.goal_timeout
            while goal.received < expected and loop.time() < deadline:
                await asyncio.sleep(POLL)
            self.report({"kind": "goal", "worker": self.index, "seq": seq, "expected": expected,
                         "received": goal.received, "first_at": goal.first,
                         "last_at": goal.last})  # fmt: skip

    async def _keep_trying(
        self,
        client: StormClient,
        delay: float = 0.0,
        held: bool = False,
        first: list[float] | None = None,
    ) -> None:
        """Connect ``client`` until it is subscribed; the wall clock of the first
        attempt of all those given the same ``first`` list goes into it."""
        tally, backoff = self.tally, 0.5
        if delay > 0:
            await asyncio.sleep(delay)
        while not self.stopping:
            if not held:
                await self._pending.acquire()
            held = False
            tally.attempts += 1
            tally.pending += 1
            if first is not None and not first:
                first.append(time.time())
            try:
                assert client.route is not None  # set when the client was opened
                target, source = client.route
                await client.connect(target, source, self.plan.connect_timeout)
                return
            except (OSError, TimeoutError, WebSocketError) as error:
                tally.connect_failures += 1
                tally.error(_reason(error))
            finally:
                tally.pending -= 1
                self._pending.release()
            await asyncio.sleep(backoff * (0.5 + self.rng.random()))
            backoff = min(backoff * 2, 8.0)

    def _lost(self, client: StormClient, hint_ms: int | None) -> None:
        if self.stopping:
            return
        jitter = self.rng.random() * 0.5
        delay = (hint_ms / 1000 if hint_ms is not None else 0.05) + jitter
        self._spawn(self._keep_trying(client, delay))

    async def _mass_reconnect(self, at: float) -> None:
        loop = asyncio.get_running_loop()
        await asyncio.sleep(max(0.0, at - loop.time()))
        spread = self.plan.reconnect_spread
        cut_at, cut, before = time.time(), 0, self.tally.reconnects
        # when this process's first reconnect attempt went out is reported too
        first: list[float] = []
        for client in [client for client in self.clients if client.up]:
            client.abort()
            cut += 1
            self.tally.forced_drops += 1
            delay = self.rng.random() * spread
            self._spawn(self._keep_trying(client, delay, first=first))
            if cut % CUT_BATCH == 0:
                # let the loop close these sockets and answer the reconnects begun
                # so far: a loop closing 14,000 at once answered nothing for ~5 s
                await asyncio.sleep(0)
        # the re-admission rate: from the cut until every client cut is subscribed
        # again (``up`` would not do: a cut link counts as down only once the loop
        # has run its connection_lost)
        while self.tally.reconnects - before < cut:
            await asyncio.sleep(0.02)
        self.report({"kind": "readmitted", "worker": self.index, "cut": cut, "cut_at": cut_at,
                     "first_attempt_at": first[0] if first else cut_at, "at": time.time(),
                     "clients": len(self.clients)})  # fmt: skip

    # --- steady state ----------------------------------------------------------

    async def _tick(self, start: float, end: float) -> None:
        loop = asyncio.get_running_loop()
        second = 0
        while loop.time() < end and not self.stopped():
            await asyncio.sleep(max(0.0, start + second + 1 - loop.time()))
            figures = self.tally.tick()
            self.report({"kind": "tick", "worker": self.index, "second": second, **figures})
            second += 1

    async def _ping(self, start: float) -> None:
        """Application pings, each client once per ``ping_interval``, spread evenly."""
        slices = max(1, round(self.plan.ping_interval))
        turn = 0
        while True:
            await asyncio.sleep(1.0)
            for client in self.clients[turn % slices :: slices]:
                if client.up:
                    client.ping()
            turn += 1

    # --- ending ----------------------------------------------------------------

    async def _close_all(self) -> None:
        for client in self.clients:
            try:
                client.close()
            except RuntimeError:  # uvloop: a transport whose handle is gone, not yet lost
                client.abort()
        deadline = asyncio.get_running_loop().time() + 5.0
        while any(c.transport is not None for c in self.clients):
            if asyncio.get_running_loop().time() > deadline:
                for client in self.clients:
                    client.abort()
                break
            await asyncio.sleep(0.05)

    def _final(self) -> dict:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return {
            "kind": "final",
            "worker": self.index,
            "clients": len(self.clients),
            "max_rss_kib": usage.ru_maxrss,
            "cpu_user": usage.ru_utime,
            "cpu_system": usage.ru_stime,
            **self.tally.totals(),
        }


def worker_process(plan: StormPlan, index: int, queue, start, t0, stop, control=None) -> None:
    """Entry point of a spawned worker; talks to the parent only through ``queue``."""
    run: Callable[..., Any]
    try:
        import uvloop

        run = uvloop.run
    except ImportError:  # pragma: no cover
        run = asyncio.run
    try:
        files = raise_file_limit()
        queue.put({"kind": "ready", "worker": index, "pid": os.getpid(), "files": files})
        if not start.wait(120):
            return
        worker = Worker(plan, index, t0.value, queue.put, stop.is_set, control)
        queue.put(run(worker.run()))
    except BaseException as error:  # the parent must hear about it, whatever it is
        with contextlib.suppress(Exception):
            queue.put({"kind": "failed", "worker": index, "error": repr(error)})
        raise
