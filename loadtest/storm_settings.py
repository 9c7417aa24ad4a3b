"""Settings of ``scorecast storm``: flags, their checks, and the worker plan.

Every flag also reads ``SCORECAST_<FLAG>`` from the environment. Settings
that cannot work are refused with a :class:`StormError` saying why: targets
outside loopback, more connections per process than the open-file limit
allows, more per (source, destination) pair than there are ephemeral ports.

The defaults fit what ``scorecast dev`` (``make run``) runs: its gateway on
``ws://127.0.0.1:8080/ws``, its simulator's six matches ``match.1000`` ..
``match.1005``, and no publishing of our own (``--publish-rate 0``), since
the simulator already publishes there. dev's embedded nats-server listens on
a free port (printed at start, ``NATS: ...``); pass it as ``--nats`` to
publish too.
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import itertools
import math
import os
import resource
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlsplit

from scorecast.flags import add_settings, csv, setting, settings_from
from scorecast.loadtest.client import Target
from scorecast.loadtest.storm_worker import StormPlan

__all__ = [
    "StormError",
    "StormSettings",
    "add_arguments",
    "build_plan",
    "check_settings",
    "settings_from_args",
]

# ~28,000 ephemeral ports per (source, destination) pair, but the kernel's
# search for a free one grows costly as a pair fills: at 20,000 connections a
# pair, the generator spent 3.6x more kernel CPU than at 5,000 (docs/STORM.md)
PAIR_PORTS = 28_000
CONNECTIONS_PER_PAIR = 5_000
FILES_RESERVE = 200  # descriptors a worker needs besides its sockets


class StormError(ValueError):
    """Settings that cannot work, with the reason in the message."""


def _optional_float(text: str) -> float | None:
    return None if text.lower() in ("", "none", "off") else float(text)


def _yes(text: str) -> bool:
    if text.lower() in ("1", "yes", "true", "on"):
        return True
    if text.lower() in ("0", "no", "false", "off"):
        return False
    raise ValueError(f"expected yes or no, got {text!r}")


def _pids(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in csv(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"process ids, comma-separated, not {text!r}") from None


def _steps(text: str) -> tuple[int, ...]:
    try:
        steps = tuple(int(part.replace("_", "")) for part in csv(text))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"connection counts, comma-separated, not {text!r}"
        ) from None
    if any(b <= a for a, b in itertools.pairwise(steps)) or any(n < 1 for n in steps):
        raise argparse.ArgumentTypeError(f"--steps must rise from at least 1, got {text!r}")
    return steps


@dataclasses.dataclass(frozen=True)
class StormSettings:
    """Each field is a flag (``urls`` is ``--url``); ranges are checked by
    :func:`build_plan`, which says which flag is wrong."""

    urls: tuple[str, ...] = setting(
        ("ws://127.0.0.1:8080/ws",), parse=csv, flag="--url",
        help="gateway WebSocket URL(s), comma-separated; clients are spread over them",
    )  # fmt: skip
    connections: int = setting(1000, parse=int, help="client connections to open")
    rate: float = setting(
        500.0, parse=float, help="new connections per second, all workers together"
    )
    workers: int = setting(0, parse=int, help="generator processes (0: connections / per-worker)")
    per_worker: int = setting(
        15_000, parse=int, help="most connections one generator process holds"
    )
    sources: str = setting(
        "auto", help="source addresses: auto, a count (127.0.0.1..N), or comma-separated 127.x.y.z"
    )
    max_pending: int = setting(200, parse=int, help="connection attempts in flight per process")
    topics: int = setting(
        6, parse=int, help="topics, drawn with Zipf popularity (6: scorecast dev's --matches)"
    )
    topics_per_client: int = setting(2, parse=int, help="topics each client subscribes")
    zipf: float = setting(1.0, parse=float, help="Zipf exponent of topic popularity (0: uniform)")
    topic_prefix: str = setting(
        "match.",
        help="topic names are PREFIX<first>..PREFIX<first+N-1> (default: scorecast dev's matches)",
    )
    topic_first: int = setting(
        1000, parse=int, help="number of the first topic (1000: the simulator's)"
    )
    publish_rate: float = setting(
        0.0, parse=float,
        help="events per second over all topics, published by the storm (0, the default: "
        "publish nothing; events come from the running publishers, e.g. scorecast dev's simulator)",
    )  # fmt: skip
    nats: str = setting("nats://127.0.0.1:4222", help="NATS URL for the publisher")
    stream_history: int = setting(
        1000, parse=int, was="--history",
        help="messages kept per topic in SCORES if the publisher creates it",
    )  # fmt: skip
    duration: float = setting(
        60.0, parse=float, help="seconds from the first connection to the end of publishing"
    )
    drain: float = setting(2.0, parse=float, help="seconds between the last publish and closing")
    reconnect_at: float | None = setting(
        None, parse=_optional_float,
        help="seconds after the start at which every client is cut and reconnects with since "
        "(none: no mass reconnect)",
    )  # fmt: skip
    reconnect_spread: float = setting(
        0.0, parse=float, help="seconds over which the mass reconnect is spread (0: all at once)"
    )
    ping_interval: float = setting(
        0.0, parse=float,
        help="application ping per client, seconds (0: none; gateway pings are always answered)",
    )  # fmt: skip
    connect_timeout: float = setting(15.0, parse=float, help="seconds from SYN to 'subscribed'")
    seed: int = setting(1, parse=int, help="random seed of topic picks and jitter")
    scrape: bool = setting(
        True, parse=_yes, shown="yes", help="read the gateways' /metrics each second (yes/no)"
    )
    # server processes whose CPU and memory to record
    watch_pids: tuple[int, ...] = setting(
        (), parse=_pids,
        help="PIDs of server processes (gateways, nats-server), comma-separated, whose CPU "
        "and memory (children included) to record each second",
    )  # fmt: skip
    steps: tuple[int, ...] = setting(
        (), parse=_steps, shown="none",
        help="the cost curve: connection counts, comma-separated (10000,50000,...); ramp to "
        "each, hold, measure memory (PSS, kernel) and the handshake rate, publish one goal "
        "every client holds and time its arrival at the last client; the last step is "
        "--connections, --duration the longest the run may take",
    )  # fmt: skip
    step_hold: float = setting(5.0, parse=float, help="seconds to hold each step before measuring")
    goal_timeout: float = setting(
        60.0, parse=float, help="seconds a step's goal may take to arrive"
    )
    min_available_mib: int = setting(
        3072, parse=int,
        help="stop the storm when the machine's available memory falls below this (0: never)",
    )  # fmt: skip
    output: str = setting("storm-result.json", help="JSON result file")
    quiet: bool = setting(False, parse=_yes, shown="no", help="no progress lines (yes/no)")


def add_arguments(parser: argparse.ArgumentParser, environ: Mapping[str, str] = os.environ):
    """The ``storm`` flags, one per :class:`StormSettings` field; each also
    reads ``SCORECAST_<FLAG>``."""
    add_settings(parser, StormSettings, environ)
    return parser


def settings_from_args(args: argparse.Namespace) -> StormSettings:
    return settings_from(StormSettings, args)


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _targets(urls: tuple[str, ...]) -> tuple[Target, ...]:
    if not urls:
        raise StormError("--url: at least one gateway URL is needed")
    targets = []
    for url in urls:
        parts = urlsplit(url)
        if parts.scheme != "ws" or not parts.hostname:
            raise StormError(f"--url {url!r}: expected ws://HOST:PORT/PATH (no TLS)")
        if not _loopback(parts.hostname):
            raise StormError(f"--url {url!r}: load goes to loopback addresses only")
        host = "127.0.0.1" if parts.hostname == "localhost" else parts.hostname
        if ":" in host:
            raise StormError(f"--url {url!r}: IPv4 loopback only (source addresses are IPv4)")
        path = (parts.path or "/ws") + (f"?{parts.query}" if parts.query else "")
        targets.append(Target(host, parts.port or 80, path))
    return tuple(targets)


def _sources(spec: str, connections: int, targets: int) -> tuple[str, ...]:
    if spec == "auto":
        count = min(250, max(1, math.ceil(connections / (targets * CONNECTIONS_PER_PAIR))))
    elif spec.isdigit():
        count = int(spec)
    else:
        addresses = csv(spec)
        for address in addresses:
            try:
                valid = ipaddress.IPv4Address(address).is_loopback
            except ValueError:
                valid = False
            if not valid:
                raise StormError(f"--sources: {address!r} is not an IPv4 loopback address")
        return addresses
    if not 1 <= count <= 250:
        raise StormError("--sources: between 1 and 250 addresses")
    # 127.0.0.1 .. 127.0.0.N: the whole of 127.0.0.0/8 is loopback on Linux
    return tuple(f"127.0.0.{n}" for n in range(1, count + 1))


def build_plan(settings: StormSettings) -> StormPlan:
    s = settings
    if s.steps:  # the last step is the connection count
        s = dataclasses.replace(s, connections=s.steps[-1])
    for name, value, low in (
        ("connections", s.connections, 1),
        ("per-worker", s.per_worker, 1),
        ("max-pending", s.max_pending, 1),
        ("topics", s.topics, 1),
        ("topics-per-client", s.topics_per_client, 1),
    ):
        if value < low:
            raise StormError(f"--{name} must be at least {low}, got {value}")
    for name, amount in (
        ("rate", s.rate),
        ("duration", s.duration),
        ("connect-timeout", s.connect_timeout),
    ):
        if not amount > 0:
            raise StormError(f"--{name} must be positive, got {amount}")
    for name, figure in (
        ("publish-rate", s.publish_rate),
        ("drain", s.drain),
        ("reconnect-spread", s.reconnect_spread),
        ("step-hold", s.step_hold),
        ("zipf", s.zipf),
        ("ping-interval", s.ping_interval),
        ("workers", s.workers),
    ):
        if figure < 0:
            raise StormError(f"--{name} must not be negative, got {figure}")
    if s.reconnect_at is not None and not 0 < s.reconnect_at < s.duration:
        raise StormError("--reconnect-at must fall inside --duration")
    if s.steps and s.reconnect_at is not None:
        raise StormError("--steps and --reconnect-at are separate runs: pick one")
    if s.topics_per_client > s.topics:
        raise StormError("--topics-per-client cannot exceed --topics")
    targets = _targets(s.urls)
    sources = _sources(s.sources, s.connections, len(targets))
    pairs = len(targets) * len(sources)
    if s.connections / pairs > PAIR_PORTS:
        raise StormError(
            f"{s.connections:,} connections over {pairs} (source, destination) "
            "pairs exceed ~28,000 ephemeral ports each: add --sources"
        )
    workers = s.workers or math.ceil(s.connections / s.per_worker)
    workers = min(workers, s.connections)
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    each = math.ceil(s.connections / workers)
    if each + FILES_RESERVE > hard:
        raise StormError(
            f"{each:,} connections per worker exceed the open-file limit "
            f"({hard:,}): raise --workers or lower --per-worker"
        )
    return StormPlan(
        targets=targets, sources=sources, connections=s.connections, workers=workers,
        rate=s.rate, max_pending=s.max_pending, topics=s.topics,
        topics_per_client=s.topics_per_client, zipf=s.zipf, prefix=s.topic_prefix,
        seed=s.seed, duration=s.duration, drain=s.drain, reconnect_at=s.reconnect_at,
        reconnect_spread=s.reconnect_spread, ping_interval=s.ping_interval,
        connect_timeout=s.connect_timeout, topic_first=s.topic_first, steps=s.steps,
        goal_topic=f"{s.topic_prefix}goal" if s.steps else None,
    )  # fmt: skip


def check_settings(settings: StormSettings) -> StormPlan:
    """The plan, or a StormError; also checks that watched processes exist."""
    plan = build_plan(settings)
    missing = [pid for pid in settings.watch_pids if not Path(f"/proc/{pid}").exists()]
    if missing:
        raise StormError(f"--watch-pids: no process {missing[0]}")
    return plan
