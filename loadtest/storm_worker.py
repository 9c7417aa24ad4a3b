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

from scorecast.loadtest.client import StormClient, Target, raise_file_limit
from scorecast.loadtest.frames import HandshakeError, WebSocketError
from scorecast.loadtest.tally import Tally
from scorecast.loadtest.zipf import ZipfTopics

__all__ = ["StormPlan", "Worker", "worker_process"]


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


class Worker:
    def __init__(
        self,
        plan: StormPlan,
        index: int,
        t0: float,
        report: Callable[[dict], None],
        stopped: Callable[[], bool] = lambda: False,
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
        self.zipf = ZipfTopics(plan.topics, plan.zipf, plan.prefix)
        self._tasks: set[asyncio.Task] = set()
        self._pending: asyncio.Semaphore | None = None

    def _spawn(self, coroutine) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def run(self) -> dict:
        loop = asyncio.get_running_loop()
        start = loop.time() + (self.t0 - time.time())  # t0 on this loop's clock
        end = start + self.plan.duration + self.plan.drain
        self._pending = asyncio.Semaphore(self.plan.max_pending)
        opener = loop.create_task(self._open_all(start))
        chores = [opener, loop.create_task(self._tick(start, end))]
        if self.plan.reconnect_at is not None:
            chores.append(loop.create_task(self._mass_reconnect(start + self.plan.reconnect_at)))
        if self.plan.ping_interval > 0:
            chores.append(loop.create_task(self._ping(start)))
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
        loop = asyncio.get_running_loop()
        plan = self.plan
        for index in range(self.index, plan.connections, plan.workers):
            delay = start + index / plan.rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            client = StormClient(self.zipf.sample(plan.topics_per_client, self.rng), self.tally)
            client.route = plan.route(index)
            client.on_lost = self._lost
            self.clients.append(client)
            await self._pending.acquire()  # a slow gateway slows the ramp, not piles SYNs up
            self._spawn(self._keep_trying(client, held=True))

    async def _keep_trying(self, client: StormClient, delay: float = 0.0, held=False) -> None:
        tally, backoff = self.tally, 0.5
        if delay > 0:
            await asyncio.sleep(delay)
        while not self.stopping:
            if not held:
                await self._pending.acquire()
            held = False
            tally.attempts += 1
            tally.pending += 1
            try:
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
        for client in self.clients:
            if client.up:
                client.abort()
                self.tally.forced_drops += 1
                self._spawn(self._keep_trying(client, self.rng.random() * spread))

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
            client.close()
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


def worker_process(plan: StormPlan, index: int, queue, start, t0, stop) -> None:
    """Entry point of a spawned worker; talks to the parent only through ``queue``."""
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
        worker = Worker(plan, index, t0.value, queue.put, stop.is_set)
        queue.put(run(worker.run()))
    except BaseException as error:  # the parent must hear about it, whatever it is
        with contextlib.suppress(Exception):
            queue.put({"kind": "failed", "worker": index, "error": repr(error)})
        raise
