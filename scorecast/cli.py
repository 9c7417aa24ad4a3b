"""The ``scorecast`` command. Settings are parsed here, once: every flag also
reads ``SCORECAST_<FLAG>`` from the environment (``--nats`` is
``SCORECAST_NATS``), and the result is a frozen settings object passed down."""

from __future__ import annotations

import argparse
import asyncio
import errno
import os
import re
import signal
import sys
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import Any

from scorecast import flags
from scorecast.flags import (
    LOG_LEVELS,
    Parser,
    add_settings,
    log_level,
    positive,
    setting,
    settings_from,
    unlimited,
)
from scorecast.gateway.settings import GatewaySettings
from scorecast.logs import setup_logging
from scorecast.nats_settings import NatsSettings
from scorecast.protocol.nats_auth import NatsAuth
from scorecast.publishers.settings import (
    IngestSettings,
    PublisherSettings,
    ReplaySettings,
    SimulatorSettings,
)
from scorecast.runtime import run_loop
from scorecast.stack_settings import ClusterSettings, DevSettings

__all__ = ["COMMANDS", "build_parser", "gateway_settings", "main", "nats_auth"]

USAGE = """scorecast: a real-time push gateway for live sports scores. Feeds publish
match events into NATS JetStream (ingest, replay, simulate); gateways push each
event to every subscribed phone and browser, in order, with nothing lost across
reconnects. Start everything locally with `scorecast dev` (what `make run` does)."""


def _topic(text: str) -> str:
    from scorecast.protocol.topics import is_valid_topic

    if not is_valid_topic(text):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a topic: 1 to 8 dot-separated tokens of [A-Za-z0-9_-], no wildcards"
        )
    return text


@dataclass(frozen=True, slots=True)
class WatchSettings:
    """``scorecast watch`` (the client SDK's :func:`~scorecast.client.run_watch`)."""

    url: str = setting("ws://127.0.0.1:8080/ws", help="gateway WebSocket URL")
    token: str | None = setting(None, help="JWT, sent as Authorization: Bearer")
    count: int | None = setting(None, parse=unlimited(flags.count), help="stop after N updates")
    seconds: float | None = setting(300.0, parse=unlimited(positive), help="stop after this long")


# the settings classes each command's flags are made from, in --help order
COMMANDS: dict[str, tuple[type, ...]] = {
    "gateway": (GatewaySettings,),
    "simulate": (PublisherSettings, SimulatorSettings),
    "ingest": (PublisherSettings, IngestSettings),
    "replay": (PublisherSettings, ReplaySettings),
    "watch": (WatchSettings,),
    "cluster": (ClusterSettings,),
    "dev": (DevSettings,),
}


def nats_auth(args: argparse.Namespace, parser: argparse.ArgumentParser | None = None) -> NatsAuth:
    """The NATS credentials of the parsed flags; a bad combination is a usage error."""
    try:
        return settings_from(NatsSettings, args).nats_auth()
    except ValueError as error:
        if parser is None:
            raise
        parser.error(str(error))


def build_parser(
    environ: Mapping[str, str] = os.environ, load_tools: bool = True
) -> argparse.ArgumentParser:
    """The whole command line; ``load_tools=False`` lists storm, bench and
    report without importing scorecast.loadtest (a command that is not one of
    them never loads the load tools)."""
    parser = Parser(
        prog="scorecast",
        description=USAGE,
        epilog="Every flag also reads SCORECAST_<FLAG> from the environment "
        "(--nats is SCORECAST_NATS). Exit status: 0 done or stopped, 1 failed, "
        "2 usage error, 3 a port cannot be bound (docs/OPERATIONS.md).",
    )
    _add_logging(parser, environ)
    commands = parser.add_subparsers(dest="command", required=True)

    def command(name: str, positional: Callable[[Parser], Any] | None = None, **kw: Any) -> Parser:
        sub = commands.add_parser(name, **kw)
        if positional is not None:
            positional(sub)
        for cls in COMMANDS[name]:  # a flag for every field, in declaration order
            add_settings(sub, cls, environ)
        return sub

    command("gateway", help="serve clients: WebSocket /ws, SSE /sse, HTTP /v1/topics")
    command("simulate", help="publish simulated matches")
    command("ingest", help="HTTP ingest endpoint for feeds")
    command(
        "replay",
        lambda p: p.add_argument("file", help="NDJSON feed file (format: docs/FEEDS.md)"),
        help="publish a recorded NDJSON feed",
        description="Publish a recorded NDJSON feed, one feed item per line. The feed "
        "format (fields, at/ts pacing, ids, merge-patch data, resetting a topic) is "
        "described in docs/FEEDS.md, with a JSON Schema in publishers/feed.schema.json. "
        "Exit status: 0 done, 1 bad lines or NATS unreachable (nothing published), "
        "2 usage error or missing file.",
    )
    watch = command(
        "watch",
        lambda p: p.add_argument("topics", nargs="+", type=_topic),
        help="print topics' updates as JSON lines",
    )
    _add_sse(watch, environ)
    command("cluster", help="3 clustered NATS nodes + gateways + simulator, local")
    command("dev", help="NATS + gateway + ingest + simulator, local (make run)")
    _add_load_tools(commands, environ, load_tools)
    for sub in commands.choices.values():  # global flags work after the command too
        if sub.prefix_chars == "-":  # not a missing load tool's catch-all
            _add_logging(sub, environ, subcommand=True)
    return parser


LOAD_TOOLS_MISSING = "needs the load tools, installed beside scorecast: pip install ./loadtest"


LOAD_COMMANDS = {
    "storm": "connection storm against gateways (loopback only)",
    "report": "HTML report of a storm result",
    "bench": "fan-out benchmark: scorecast vs the floor, nats-server, naive",
}


def _add_load_tools(commands: Any, environ: Mapping[str, str], load: bool) -> None:
    """``storm``, ``report`` and ``bench``: from scorecast.loadtest, a
    distribution of its own (the runtime never imports it)."""
    if not load:  # named in --help only; parsing one of them builds it for real
        for name, text in LOAD_COMMANDS.items():
            commands.add_parser(name, help=text)
        return
    try:
        from scorecast.loadtest.bench import add_arguments as add_bench_arguments
        from scorecast.loadtest.report import add_arguments as add_report_arguments
        from scorecast.loadtest.storm import __doc__ as storm_doc
        from scorecast.loadtest.storm import add_arguments as add_storm_arguments
    except ImportError:  # not installed: the commands say how to get them
        for name in ("storm", "report", "bench"):
            # no option prefix: whatever flags follow are taken, then refused below
            command = commands.add_parser(name, help=LOAD_TOOLS_MISSING, prefix_chars="\0")
            command.add_argument("rest", nargs="*", help=argparse.SUPPRESS)
            command.set_defaults(missing_load_tools=True)
        return
    storm = commands.add_parser("storm", help=LOAD_COMMANDS["storm"], description=storm_doc)
    add_storm_arguments(storm, environ)
    add_report_arguments(commands.add_parser("report", help=LOAD_COMMANDS["report"]))
    add_bench_arguments(commands.add_parser("bench", help=LOAD_COMMANDS["bench"]), environ)


def _add_logging(
    parser: argparse.ArgumentParser, environ: Mapping[str, str], *, subcommand: bool = False
) -> None:
    """``--log-level`` and ``--log-format``, before or after the command: a
    command's parser leaves them unset unless given (SUPPRESS), so the value
    given before the command, or the environment's, stands."""
    level, form = (
        environ.get("SCORECAST_LOG_LEVEL", "info"),
        environ.get("SCORECAST_LOG_FORMAT", "json"),
    )
    if not subcommand:
        try:
            log_level(level)
        except argparse.ArgumentTypeError as error:
            parser.error(f"SCORECAST_LOG_LEVEL={level!r}: {error}")
        if form not in ("json", "text"):
            parser.error(f"SCORECAST_LOG_FORMAT={form!r}: not json or text")
    parser.add_argument(
        "--log-level",
        type=log_level,
        help=f"{', '.join(LOG_LEVELS)} [SCORECAST_LOG_LEVEL, default: info]",
        default=argparse.SUPPRESS if subcommand else level,
    )
    parser.add_argument(
        "--log-format",
        choices=("json", "text"),
        help="JSON lines or human-readable text [SCORECAST_LOG_FORMAT, default: json]",
        default=argparse.SUPPRESS if subcommand else form,
    )


def _add_sse(watch: argparse.ArgumentParser, environ: Mapping[str, str]) -> None:
    """``--sse``, a switch; ``SCORECAST_SSE=1`` turns it on."""
    sse = environ.get("SCORECAST_SSE", "").strip().lower()
    if sse not in ("", "0", "1", "false", "true", "no", "yes"):
        watch.error(f"SCORECAST_SSE={sse!r}: want 1 or 0")
    watch.add_argument(
        "--sse",
        action="store_true",
        default=sse in ("1", "true", "yes"),
        help="over Server-Sent Events (GET /sse), not a WebSocket [SCORECAST_SSE, default: off]",
    )


def gateway_settings(args: argparse.Namespace) -> GatewaySettings:
    return settings_from(GatewaySettings, args)


STOP_GRACE = 1.0  # seconds a signalled command gets to finish before it is cancelled
EXIT_FAILED, EXIT_USAGE, EXIT_PORT = 1, 2, 3


async def until_signalled(start: Callable[[asyncio.Event], Coroutine[Any, Any, Any]]) -> Any:
    """Run ``start(stop)`` with ``stop`` set by SIGTERM or SIGINT, so that
    publishers close cleanly (exit 0) when a container is stopped.

    Whatever ``start`` is doing (waiting for NATS, say), it has
    ``STOP_GRACE`` seconds after the signal to return; then it is cancelled.
    A second signal cancels it at once."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    task = loop.create_task(start(stop))

    def signalled() -> None:
        if stop.is_set():
            task.cancel()
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, signalled)
    stopped = loop.create_task(stop.wait())
    try:
        await asyncio.wait([task, stopped], return_when=asyncio.FIRST_COMPLETED)
        if not task.done():
            done, _ = await asyncio.wait([task], timeout=STOP_GRACE)
            if not done:
                task.cancel()
                await asyncio.wait([task])
        if task.cancelled():
            return None
        return task.result()
    finally:
        stopped.cancel()
        if not task.done():
            task.cancel()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)


def main(argv: list[str] | None = None) -> int:
    """Run one command; its exit status. 0: done or stopped by a signal,
    1: it failed (a worker kept dying, a client never connected), 2: usage,
    3: a port it must listen on cannot be bound."""
    # until the event loop takes the signals over: SIGTERM during start-up
    # (imports can take a second) is a clean stop too, never a traceback
    signal.signal(signal.SIGTERM, _stopped_early)
    words = sys.argv[1:] if argv is None else argv
    parser = build_parser(load_tools=any(word in LOAD_COMMANDS for word in words))
    args = parser.parse_args(argv)
    setup_logging(args.log_level, args.log_format)
    try:
        return _run(parser, args)
    except KeyboardInterrupt:  # Ctrl-C before the loop's handlers were in place
        return 130
    except _StoppedEarly:
        return 0
    except OSError as error:
        if error.errno not in _BIND_ERRORS and not _bind_message(error).startswith("cannot"):
            raise
        print(f"scorecast {args.command}: {_bind_message(error)}", file=sys.stderr)
        return EXIT_PORT


class _StoppedEarly(SystemExit):
    """SIGTERM before a command took the signal over. A SystemExit, so that
    an event loop it interrupts stops and cleans up instead of logging it."""


def _stopped_early(_signum: int, _frame: object) -> None:
    raise _StoppedEarly


_BIND_ERRORS = {errno.EADDRINUSE, errno.EACCES, errno.EADDRNOTAVAIL}


def _bind_message(error: OSError) -> str:
    text = str(error.strerror or error)
    if text.startswith("cannot listen on"):
        return text
    found = re.search(r"\('([^']*)', (\d+)", text)
    why = text.rsplit(": ", 1)[-1].lower()
    if found:
        return f"cannot listen on {found.group(1)}:{found.group(2)}: {why}"
    return text


def _run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    if hasattr(args, "nats_creds"):
        nats_auth(args, parser)  # a combination that cannot be used: a usage error, now
    if args.command == "gateway":
        settings = gateway_settings(args)
        if settings.workers > 1:
            from scorecast.gateway.workers import run_workers

            return run_workers(settings)
        from scorecast.gateway.server import run_gateway

        run_loop(run_gateway(settings))
    elif args.command in ("simulate", "ingest", "replay"):
        return _publish(args)
    elif args.command == "watch":
        from scorecast.client import run_watch

        return (
            run_loop(
                until_signalled(
                    lambda stop: run_watch(
                        args.url,
                        args.topics,
                        token=args.token,
                        count=args.count,
                        seconds=args.seconds,
                        sse=args.sse,
                        stop=stop,
                    )
                )
            )
            or 0
        )
    elif args.command == "cluster":
        from scorecast.cluster import run_cluster

        try:
            run_loop(
                until_signalled(
                    lambda stop: run_cluster(settings_from(ClusterSettings, args), stop=stop)
                )
            )
        except ValueError as error:
            print(f"scorecast cluster: {error}", file=sys.stderr)
            return EXIT_USAGE
        except FileNotFoundError as error:  # no nats-server binary
            print(f"scorecast cluster: {error}", file=sys.stderr)
            return EXIT_USAGE
    elif getattr(args, "missing_load_tools", False):
        parser.exit(EXIT_USAGE, f"scorecast {args.command}: {LOAD_TOOLS_MISSING}\n")
    elif args.command == "storm":
        from scorecast.loadtest.storm import main as storm_main

        return storm_main(args)
    elif args.command == "bench":
        from scorecast.loadtest.bench import run_from_args

        return run_from_args(args)
    elif args.command == "report":
        from scorecast.loadtest.report import main as report_main

        return report_main(args)
    elif args.command == "dev":
        from scorecast.dev import run_dev

        try:
            run_loop(run_dev(settings_from(DevSettings, args)))
        except FileNotFoundError as error:  # no nats-server binary
            print(f"scorecast dev: {error}", file=sys.stderr)
            return EXIT_USAGE
    return 0


def _publish(args: argparse.Namespace) -> int:
    """``simulate``, ``ingest`` or ``replay``, with its settings objects."""
    publisher = settings_from(PublisherSettings, args)
    if args.command == "simulate":
        from scorecast.publishers.simulator import run_simulator

        simulation = settings_from(SimulatorSettings, args)
        run_loop(until_signalled(lambda stop: run_simulator(publisher, simulation, stop=stop)))
    elif args.command == "ingest":
        from scorecast.publishers.ingest import run_ingest

        ingest = settings_from(IngestSettings, args)
        run_loop(until_signalled(lambda stop: run_ingest(publisher, ingest, stop=stop)))
    else:
        from scorecast.publishers.replay import replay_command

        replay = settings_from(ReplaySettings, args)
        return run_loop(
            until_signalled(lambda stop: replay_command(publisher, replay, args.file, stop))
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
