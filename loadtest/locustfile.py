"""A locust user that speaks the scorecast WebSocket protocol.

Locust has no WebSocket user of its own; this one uses ``websocket-client``,
whose blocking sockets become cooperative under the gevent monkey patching
locust applies on import, with one greenlet per user reading frames. Each
user connects, subscribes to topics drawn with Zipf popularity, holds the
connection (answering the gateway's WebSocket pings, and sending the
application ``ping`` on the heartbeat), and reconnects with ``since`` when
the link drops or the gateway says ``reconnect``.

What reaches locust's statistics (request type ``WS``), response times in ms:

- ``connect``: TCP + upgrade; ``subscribe``: subscribe sent -> ``subscribed``;
- ``snapshot``: subscribe sent -> that topic's snapshot;
- ``event``: publish-to-receive, from the envelope's ``ts`` (same machine clock);
- ``catch-up``: the same for events published while the user was away and
  replayed after a reconnect (so mostly the time away, not a latency);
- ``pong``: application ping round trip;
- failures: a refused or failed connect, an ``error`` frame, a drop the user
  did not ask for (``drop``), and each gap, duplicate or step backwards (``event``).

Run (headless, for CI)::

    locust -f loadtest/locustfile.py --headless -u 200 -r 50 -t 60s \
        --host ws://127.0.0.1:8080 --csv out/scorecast

or without ``--headless`` for the web UI on :8089. Add
``loadtest/locust_storm.py`` (``-f loadtest/locustfile.py,loadtest/locust_storm.py``)
for the storm shape. Settings: the ``--scorecast-*`` flags below, or the
``SCORECAST_LOCUST_*`` environment variables.
"""

from __future__ import annotations

import contextlib
import itertools
import random
import sys
import time
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gevent
import orjson
import websocket
from locust import User, constant, events, task
from locust.runners import MasterRunner

if TYPE_CHECKING:
    from locust.argument_parser import LocustArgumentParser
    from locust.env import Environment
    from locust.rpc.protocol import Message

# locust puts this file's folder on sys.path, not the checkout: make the
# ``loadtest`` package importable without installing the project
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from scorecast.loadtest.frames import parse_close
from scorecast.loadtest.tracker import Arrival, Positions
from scorecast.loadtest.zipf import ZipfTopics

__all__ = ["RECONNECT_MESSAGE", "ScorecastUser"]

RECONNECT_MESSAGE = "scorecast_reconnect"
_users: weakref.WeakSet[ScorecastUser] = weakref.WeakSet()
_ids = itertools.count()


@events.init_command_line_parser.add_listener
def _add_arguments(parser: LocustArgumentParser) -> None:
    group = parser.add_argument_group("scorecast")

    def flag(name: str, default: Any, kind: Callable[[str], Any], text: str) -> None:
        variable = "SCORECAST_LOCUST_" + name.upper().replace("-", "_")
        group.add_argument(
            f"--scorecast-{name}", type=kind, default=default, env_var=variable, help=text
        )

    flag("path", "/ws", str, "WebSocket path on --host")
    # the defaults are what `make run` (scorecast dev) publishes: match.1000..1005
    flag("topics", 6, int, "topics, drawn with Zipf popularity")
    flag("topics-per-user", 2, int, "topics each user subscribes to")
    flag("zipf", 1.0, float, "Zipf exponent of topic popularity (0: uniform)")
    flag("topic-prefix", "match.", str, "topic names are PREFIX<first-id>..")
    flag("first-id", 1000, int, "number of the first topic (the simulator's --first-id)")
    flag("ping-interval", 0.0, float, "application ping, seconds (0: the welcome's heartbeat)")
    flag("reconnect-jitter", 1.0, float, "seconds over which reconnects after a drop spread")
    flag("token", "", str, "JWT sent as ?token= (none when empty)")
    flag("seed", 0, int, "random seed of topic picks (0: random)")
    # the storm shape (loadtest/locust_storm.py) reads these; -u and -r set its size and pace
    flag("hold", 30.0, float, "storm shape: seconds at full size before the mass reconnect")
    flag("hold-after", 30.0, float, "storm shape: seconds at full size after it")
    flag("ramp-down", 0.0, float, "storm shape: users stopped per second at the end (0: -r)")


@events.init.add_listener
def _on_init(environment: Environment, **_kwargs: Any) -> None:
    runner = environment.runner
    if runner is not None and not isinstance(runner, MasterRunner):
        runner.register_message(RECONNECT_MESSAGE, _mass_reconnect)


def _mass_reconnect(environment: Environment, msg: Message, **_kwargs: Any) -> None:
    """Every user on this process drops its link at once and comes back with ``since``."""
    for user in list(_users):
        user.drop()


class SequenceError(Exception):
    """A gap, duplicate or step backwards in a topic's positions."""


class ConnectionDropped(Exception):
    """The link ended without the user asking."""


class ScorecastUser(User):
    # the one task pings and then sleeps a heartbeat; a greenlet per user reads frames
    wait_time = constant(0)

    def __init__(self, environment: Environment) -> None:
        super().__init__(environment)
        options = environment.parsed_options
        self.options = options
        seed = getattr(options, "scorecast_seed", 0)
        self.rng = random.Random(seed * 1_000_003 + next(_ids) if seed else None)
        zipf = ZipfTopics(
            getattr(options, "scorecast_topics", 6),
            getattr(options, "scorecast_zipf", 1.0),
            getattr(options, "scorecast_topic_prefix", "match."),
            getattr(options, "scorecast_first_id", 1000),
        )
        self.topics = zipf.sample(getattr(options, "scorecast_topics_per_user", 2), self.rng)
        self.positions = Positions()
        self.ws: websocket.WebSocket | None = None
        self.heartbeat = 20.0
        self.requests = 0
        self.pings: dict[int, float] = {}
        self.snapshot_due: dict[str, float] = {}
        self.subscribe_sent = 0.0
        self.link_wall = 0.0
        self.leaving = False
        self.forced = False
        self.reader: gevent.Greenlet | None = None

    # --- reporting -------------------------------------------------------------

    def _fire(
        self, name: str, millis: float, length: int = 0, error: Exception | None = None
    ) -> None:
        self.environment.events.request.fire(
            request_type="WS",
            name=name,
            response_time=millis,
            response_length=length,
            exception=error,
            context={},
        )

    # --- lifecycle -------------------------------------------------------------

    def on_start(self) -> None:
        _users.add(self)
        self.reader = gevent.spawn(self._read_forever)

    def on_stop(self) -> None:
        self.leaving = True
        if self.ws is not None:
            with contextlib.suppress(Exception):
                self.ws.close(timeout=1)
        if self.reader is not None:
            self.reader.kill(block=False)

    def drop(self) -> None:
        """Cut the link as a network failure would (the reader reconnects)."""
        if self.ws is not None and self.ws.sock is not None:
            self.forced = True
            with contextlib.suppress(OSError):
                self.ws.sock.shutdown(2)

    def _url(self) -> str:
        host = (self.host or "ws://127.0.0.1:8080").rstrip("/")
        path = getattr(self.options, "scorecast_path", "/ws")
        url = host if host.endswith(path) else host + path
        token = getattr(self.options, "scorecast_token", "")
        return f"{url}?token={token}" if token else url

    def _connect(self) -> websocket.WebSocket | None:
        """A new link, subscribed to; None when it could not be opened."""
        started, started_wall = time.perf_counter(), time.time()
        try:
            ws = websocket.create_connection(
                self._url(), timeout=15, enable_multithread=False, skip_utf8_validation=True
            )
        except Exception as error:
            self._fire("connect", (time.perf_counter() - started) * 1000, 0, error)
            return None
        self._fire("connect", (time.perf_counter() - started) * 1000)
        # on the first link every event counts as live, even one published a
        # moment before the connect that arrives after the snapshot
        self.link_wall = started_wall if self.requests else 0.0
        ws.settimeout(None)
        self.ws = ws
        self.requests += 1
        request: dict = {"type": "subscribe", "id": self.requests, "topics": self.topics}
        since = self.positions.since(self.topics)
        if since:
            request["since"] = since
        self.subscribe_sent = time.perf_counter()
        # with since, a topic that has nothing new gets no frame at all: only
        # topics without a position wait for a snapshot
        self.snapshot_due = {t: self.subscribe_sent for t in self.topics if t not in since}
        ws.send(orjson.dumps(request).decode())
        return ws

    def _read_forever(self) -> None:
        backoff = 0.5
        hint: float | None = None
        while not self.leaving:
            ws = self.ws
            if ws is None:
                ws = self._connect()
                if ws is None:
                    gevent.sleep(backoff * (0.5 + self.rng.random()))
                    backoff = min(backoff * 2, 8.0)
                    continue
                backoff = 0.5
            hint = self._read_link(ws)
            if self.leaving:
                return
            jitter = getattr(self.options, "scorecast_reconnect_jitter", 1.0)
            gevent.sleep((hint or 0.0) + self.rng.random() * jitter)

    def _read_link(self, ws: websocket.WebSocket) -> float | None:
        """Read ``ws`` (the link held in ``self.ws``) until it ends; the
        reconnect delay the gateway hinted, if any."""
        hint: float | None = None
        try:
            while True:
                opcode, payload = ws.recv_data()
                if opcode == websocket.ABNF.OPCODE_CLOSE:
                    code = parse_close(payload)[0]
                    if code == 1012:
                        hint = hint or 0.0
                    elif not self.leaving:
                        self._fire("drop", 0, 0, ConnectionDropped(f"closed with {code}"))
                    break
                hint = self._frame(payload, hint)
        except Exception as error:
            if not self.leaving and not self.forced:
                self._fire("drop", 0, 0, ConnectionDropped(repr(error)))
        finally:
            self.ws, self.forced = None, False
            with contextlib.suppress(Exception):
                ws.close(timeout=0)
        return hint

    def _frame(self, payload: bytes, hint: float | None) -> float | None:
        now = time.perf_counter()
        message = orjson.loads(payload)
        kind = message.get("type")
        if kind == "event":
            topic, seq = message["topic"], message["seq"]
            verdict = self.positions.event(topic, seq)
            latency = max(0.0, time.time() - message["ts"]) * 1000
            # an event published before this link existed was replayed per since:
            # its "latency" is mostly the time away, so it is reported apart
            name = "event" if message["ts"] >= self.link_wall else "catch-up"
            if verdict is Arrival.OK:
                self._fire(name, latency, len(payload))
            else:
                error = SequenceError(f"{verdict.value} on {topic}: seq {seq}")
                self._fire(name, latency, len(payload), error)
        elif kind == "snapshot":
            topic = message["topic"]
            self.positions.snapshot(topic, message["seq"])
            sent = self.snapshot_due.pop(topic, self.subscribe_sent)
            self._fire("snapshot", (now - sent) * 1000, len(payload))
        elif kind == "subscribed":
            self._fire("subscribe", (now - self.subscribe_sent) * 1000, len(payload))
        elif kind == "welcome":
            self.heartbeat = float(message.get("heartbeat") or self.heartbeat)
        elif kind == "pong":
            pinged = self.pings.pop(message.get("id"), None)
            if pinged is not None:
                self._fire("pong", (now - pinged) * 1000, len(payload))
        elif kind == "error":
            name = "error:" + str(message.get("code"))
            self._fire(name, 0, len(payload), RuntimeError(message.get("message")))
        elif kind == "reconnect":
            return message.get("after_ms", 0) / 1000
        return hint

    # --- the heartbeat -----------------------------------------------------------

    @task
    def ping(self) -> None:
        interval = getattr(self.options, "scorecast_ping_interval", 0.0) or self.heartbeat
        ws = self.ws
        if ws is not None and ws.connected:
            self.requests += 1
            self.pings = {self.requests: time.perf_counter()}  # an unanswered one is dropped
            # a failed send is a drop, which the reader sees and reports
            with contextlib.suppress(Exception):
                ws.send(orjson.dumps({"type": "ping", "id": self.requests}).decode())
        gevent.sleep(interval)
