"""What every fault scenario shares: a gateway process with its memory
watched, lean raw-protocol clients, a pipelined publisher, the final check
against the stream, and one report line per scenario.

A client is the storm's own (:class:`scorecast.loadtest.client.StormClient`:
its framing, sequence checker and counters) that also keeps each topic's
state: its last snapshot merge-patched by the events after it, compared with
the ``state`` of the stream's newest message for each topic. Gateways are
started and awaited with :mod:`scorecast.loadtest.stack`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import orjson

from scorecast.loadtest.client import StormClient, Target
from scorecast.loadtest.procstat import resident_bytes
from scorecast.loadtest.publisher import Envelopes
from scorecast.loadtest.stack import http_get, spawn_gateway, stop_process, wait_ready
from scorecast.loadtest.tally import Tally
from scorecast.natsserver import free_port
from scorecast.protocol import STREAM_NAME
from scorecast.protocol.merge_patch import apply_patch
from scorecast.protocol.topics import subject_for

RESULTS = Path(os.environ.get("SCORECAST_FAULTS_RESULTS", ".faults-results.jsonl"))
MB = 1024 * 1024
LOG_LEVEL = os.environ.get("SCORECAST_FAULTS_LOG", "error")  # the gateways' log level


# --- the gateway under test -------------------------------------------------------


class GatewayProcess:
    """``scorecast gateway`` as a real process (one worker), memory sampled;
    started and awaited with the one harness, :mod:`scorecast.loadtest.stack`."""

    running: list[GatewayProcess] = []  # stopped by the suite's fixture at the end

    def __init__(self, nats_urls: list[str], *extra: str) -> None:
        GatewayProcess.running.append(self)
        self.port = free_port()
        self.process = spawn_gateway(",".join(nats_urls), self.port, workers=1,
                                     log_level=LOG_LEVEL, extra=extra)  # fmt: skip
        self.peak = 0
        self._sampler: asyncio.Task[None] | None = None

    @property
    def pid(self) -> int:
        return self.process.pid

    async def ready(self, timeout: float = 30.0) -> None:
        await asyncio.to_thread(
            wait_ready, self.port, process=self.process, timeout=timeout, interval=0.2
        )
        self._sampler = asyncio.get_running_loop().create_task(self._sample())

    def rss(self) -> int:
        return resident_bytes(self.pid)

    async def _sample(self) -> None:
        while True:
            self.peak = max(self.peak, self.rss())
            await asyncio.sleep(0.1)

    async def http(self, path: str) -> tuple[int, str]:
        """(status, body) of a GET; (0, reason) when it does not answer."""
        try:
            status, body = await asyncio.to_thread(http_get, "127.0.0.1", self.port, path, 3)
        except OSError as exc:
            return 0, repr(exc)
        return status, body.decode(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is not None:
            return
        if self._sampler is not None:
            self._sampler.cancel()
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGCONT)
        stop_process(self.process, signal.SIGINT)


# --- clients ------------------------------------------------------------------------


class FaultClient(StormClient):
    """One logical client: the storm's own (:class:`~scorecast.loadtest.client.StormClient`:
    positions and counts survive its reconnects, which resubscribe with
    ``since``), plus each topic's state and how its last link ended.
    ``reading=False`` makes a stalled phone: a tiny receive buffer and no reads
    once subscribed, until :meth:`read_again`."""

    max_frame = 16 * MB

    def __init__(self, topics: list[str], *, reading: bool = True) -> None:
        super().__init__(topics, Tally())
        self.reading = reading
        self.states: dict[str, object] = {}
        self.close_code: int | None = None
        self.lost = asyncio.Event()
        self.lost_by: str | None = None

    @property
    def snapshots(self) -> int:
        return self.tally.snapshots

    async def connect_to(self, port: int, timeout: float = 20.0) -> None:
        self.lost.clear()
        self.close_code = None
        target, buffer = Target("127.0.0.1", port), None if self.reading else 4096
        await self.connect(target, None, timeout, receive_buffer=buffer)

    def _message(self, payload: bytes) -> None:
        super()._message(payload)
        frame = orjson.loads(payload)
        if frame["type"] == "event":
            topic = frame["topic"]
            self.states[topic] = apply_patch(self.states.get(topic), frame["data"])
        elif frame["type"] == "snapshot":
            self.states[frame["topic"]] = frame["state"]

    def _subscribed(self) -> None:
        super()._subscribed()
        if not self.reading and self.transport is not None:
            self.transport.pause_reading()

    def _closed_by_server(self, code: int, reason: str) -> None:
        self.close_code = code
        super()._closed_by_server(code, reason)

    def read_again(self) -> None:
        """Back in coverage: reads again, with an ordinary receive window."""
        self.reading = True
        if self.transport is not None:
            sock = self.transport.get_extra_info("socket")
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 256 * 1024)
            self.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self.lost_by = repr(exc) if exc is not None else None
        self.lost.set()


async def open_clients(port: int, topic_sets: list[list[str]], **kwargs) -> list[FaultClient]:
    """Connected and subscribed clients, each holding a first snapshot of
    every topic (unless it does not read)."""
    clients = [FaultClient(topics, **kwargs) for topics in topic_sets]
    for start in range(0, len(clients), 50):  # 50 handshakes at a time
        await asyncio.gather(*(c.connect_to(port) for c in clients[start : start + 50]))
    deadline = time.monotonic() + 30
    while any(c.reading and len(c.positions.seqs) < len(c.topics) for c in clients):
        assert time.monotonic() < deadline, "clients never got their first snapshots"
        await asyncio.sleep(0.1)
    return clients


# --- publishing ---------------------------------------------------------------------


class Feed:
    """Envelopes per PROTOCOL.md section 2, pipelined (``window`` acks in
    flight); a publish that fails is retried with the same Nats-Msg-Id, so
    each event is stored once, in order per topic."""

    def __init__(self, js, pad: int = 0) -> None:
        self.js = js
        self.envelopes = Envelopes()
        self.pad = "x" * pad
        self.published = 0
        self.retries = 0

    def _next(self, topic: str) -> tuple[str, bytes, dict[str, str]]:
        seq = self.envelopes.seqs.get(topic, 0) + 1
        return self.envelopes.next(topic, {"n": seq, "pad": self.pad} if self.pad else {"n": seq})

    async def _publish(self, subject: str, body: bytes, headers: dict, deadline: float) -> None:
        while True:
            try:
                await self.js.publish(subject, body, headers=headers, timeout=2)
                self.published += 1
                return
            except Exception:
                self.retries += 1
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.2)

    async def burst(self, topics: list[str], count: int, window: int = 256) -> None:
        """``count`` events round-robin over ``topics``; one topic's events are
        in flight one at a time when it must be retried, never reordered."""
        deadline = time.monotonic() + 120
        pending: list[asyncio.Task[None]] = []
        for index in range(count):
            envelope = self._next(topics[index % len(topics)])
            pending.append(asyncio.ensure_future(self._publish(*envelope, deadline)))
            if len(pending) >= window:
                await asyncio.gather(*pending)
                pending = []
        await asyncio.gather(*pending)

    async def steady(self, topics: list[str], rate: float, stop: asyncio.Event) -> None:
        """One event at a time per round, each retried until stored: survives
        a frozen server or a leader election."""
        deadline = time.monotonic() + 600
        while not stop.is_set():
            for topic in topics:
                await self._publish(*self._next(topic), deadline)
                await asyncio.sleep(1 / rate)


# --- the verdict --------------------------------------------------------------------


@dataclass
class Figures:
    scenario: str
    clients: int = 0
    events_published: int = 0
    frames_checked: int = 0
    gaps: int = 0
    duplicates: int = 0
    backsteps: int = 0
    no_snapshot: int = 0
    state_mismatches: int = 0
    rss_before_mb: float = 0.0
    rss_peak_mb: float = 0.0
    rss_after_mb: float = 0.0
    seconds: float = 0.0
    notes: dict = field(default_factory=dict)
    violations: list[str] = field(default_factory=list)

    def tally(self, clients: list[FaultClient]) -> None:
        self.clients = len(clients)
        for client in clients:
            tally = client.tally
            self.frames_checked += tally.events + tally.snapshots
            self.gaps += tally.gaps
            self.duplicates += tally.duplicates
            self.backsteps += tally.backwards
            self.no_snapshot += tally.no_snapshot

    def memory(self, gateway: GatewayProcess, before: int) -> None:
        self.rss_before_mb = round(before / MB, 1)
        self.rss_peak_mb = round(max(gateway.peak, before) / MB, 1)
        self.rss_after_mb = round(gateway.rss() / MB, 1)

    def report(self) -> None:
        for name in ("gaps", "duplicates", "backsteps", "no_snapshot", "state_mismatches"):
            if getattr(self, name):
                self.violations.append(f"{name}={getattr(self, name)}")
        line = (
            f"[fault] {self.scenario}: clients={self.clients} events={self.events_published} "
            f"frames={self.frames_checked} gaps={self.gaps} duplicates={self.duplicates} "
            f"backsteps={self.backsteps} no_snapshot={self.no_snapshot} "
            f"state_mismatches={self.state_mismatches} rss_mb={self.rss_before_mb}/"
            f"{self.rss_peak_mb}/{self.rss_after_mb} (before/peak/after) "
            f"seconds={self.seconds:.1f} {json.dumps(self.notes)}"
        )
        print(line, flush=True)
        with RESULTS.open("a") as out:
            out.write(json.dumps(asdict(self)) + "\n")
        assert not self.violations, f"{self.scenario}: {', '.join(self.violations)}"


async def stream_heads(js, topics: list[str]) -> dict[str, dict]:
    heads = {}
    for topic in topics:
        message = await js.get_last_msg(STREAM_NAME, subject_for(topic))
        heads[topic] = orjson.loads(message.data)
    return heads


async def settle(clients: list[FaultClient], heads: dict[str, dict], timeout: float) -> None:
    """Wait until every client that is still connected reached each head."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(
            client.transport is None
            or all(client.positions.seqs.get(t) == heads[t]["seq"] for t in client.topics)
            for client in clients
        ):
            return
        await asyncio.sleep(0.2)


def mismatches(clients: list[FaultClient], heads: dict[str, dict]) -> int:
    """Clients whose state of a topic is not the stream's (position or state)."""
    wrong = 0
    for client in clients:
        for topic in client.topics:
            head = heads[topic]
            position, state = client.positions.seqs.get(topic), client.states.get(topic)
            if position != head["seq"] or state != head["state"]:
                wrong += 1
    return wrong
