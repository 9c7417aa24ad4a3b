"""Gateway settings: one frozen object, built once at the edge (CLI and
environment) and passed down. No other module reads the environment.

Each field is declared once, with its default, its help line and how its
flag is read (:func:`scorecast.flags.setting`); ``scorecast gateway`` makes
its flags from these fields. Limits whose ``None`` means "no limit" take
``none`` on the command line."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

from scorecast.flags import (
    amount,
    count,
    csv,
    internal,
    positive,
    readable_file,
    seconds,
    setting,
    unlimited,
)
from scorecast.flags import (
    port as tcp_port,
)
from scorecast.gateway.proxies import cidrs
from scorecast.nats_settings import NatsSettings

__all__ = ["GatewaySettings", "usable_cpus"]


def _node_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


def usable_cpus() -> int:
    """CPUs this process may run on (a container's share, not the host's)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


@dataclass(frozen=True, slots=True)
class GatewaySettings(NatsSettings):
    # where (NATS: NatsSettings)
    host: str = setting("127.0.0.1", help="listen address")
    port: int = setting(8080, parse=tcp_port, help="listen port")
    workers: int = setting(
        factory=usable_cpus, parse=count, shown="usable CPUs",
        help="worker processes sharing the port",
    )  # fmt: skip
    node: str = setting(factory=_node_name, shown="host-pid", help="node name in welcome frames")
    # protocol
    heartbeat: float = setting(20.0, parse=positive, help="WebSocket ping interval, seconds")
    replay_buffer: int = setting(
        256, parse=count, was="--history",
        help="recent events kept per topic in memory, to answer `since` without NATS",
    )  # fmt: skip
    topic_linger: float = setting(
        60.0,
        parse=seconds,
        help="seconds a topic stays subscribed, with its history, after its last client left",
    )
    coalesce: float = setting(0.0, parse=seconds, help="write window, seconds (0: one loop tick)")
    # other transports
    http_max_age: float = setting(
        1.0, parse=seconds, help="Cache-Control max-age of /v1/topics answers, seconds"
    )
    occupancy_interval: float = setting(
        1.0, parse=positive, help="seconds between this node's occupancy reports on NATS"
    )
    # limits (none: no limit)
    max_message_size: int | None = setting(
        64 * 1024, parse=unlimited(count), help="largest client frame, bytes"
    )
    max_topics_per_request: int | None = setting(
        100, parse=unlimited(count), help="topics in one subscribe"
    )
    max_topics_per_connection: int | None = setting(
        500, parse=unlimited(count), help="topics one connection holds"
    )
    # None: the open-file limit less a reserve (see gateway.server)
    max_connections: int | None = setting(
        None, parse=unlimited(count), shown="open-file limit - 200",
        help="connections per worker (none: as many as the open-file limit allows)",
    )  # fmt: skip
    # slow clients
    soft_limit: int = setting(256 * 1024, parse=count, help="unsent bytes before conflation")
    hard_limit: int = setting(4 * 1024 * 1024, parse=count, help="unsent bytes before close 4008")
    slow_grace: float = setting(
        30.0, parse=seconds, help="seconds a client may stay slow before 4008"
    )
    # SO_SNDBUF asked for each client socket (the kernel doubles it); 0 keeps
    # the kernel's autotuning, which lets one stalled socket hold ~4 MB
    socket_send_buffer: int = setting(
        64 * 1024, parse=amount, help="SO_SNDBUF per client socket (0: the kernel's)"
    )
    # abuse: more than this many malformed messages within a minute closes 4000
    max_malformed_per_minute: int = setting(
        10, parse=amount, help="malformed messages forgiven a minute"
    )
    # access
    jwt_secret: str | None = setting(None, help="HS256 secret; tokens required when set")
    jwt_public_key: str | None = setting(
        None, parse=readable_file, help="RS256/ES256 public key file (PEM)"
    )
    allowed_origins: tuple[str, ...] = setting(
        (), parse=csv, help="allowed Origin values, comma-separated"
    )
    handshake_timeout: float = setting(
        10.0, parse=positive, help="seconds to complete the handshake"
    )
    messages_per_second: float = setting(
        20.0, parse=positive, help="client messages per second, sustained"
    )
    message_burst: int = setting(40, parse=count, help="client messages allowed in a burst")
    connections_per_second: float | None = setting(
        None, parse=unlimited(positive), help="new connections per second"
    )
    connections_per_ip_per_second: float | None = setting(
        None, parse=unlimited(positive), help="new connections per second per client address"
    )
    # load balancers whose X-Forwarded-For is believed (CIDRs or addresses)
    trusted_proxies: tuple[str, ...] = setting(
        (), parse=cidrs, help="CIDRs whose X-Forwarded-For is believed"
    )
    # timeouts of the gateway's own (tests shorten them)
    close_timeout: float = setting(
        5.0, parse=positive, help="seconds a client gets to answer a close frame"
    )
    nats_request_timeout: float = setting(
        5.0, parse=positive, help="seconds a JetStream request (stream info, message get) may take"
    )
    stream_check_interval: float = setting(
        2.0, parse=positive, help="seconds between two looks at the SCORES stream (created, reset)"
    )
    # lifecycle
    drain_window: float = setting(
        10.0, parse=seconds, help="seconds over which a drain spreads reconnects"
    )
    drain_deadline: float = setting(
        30.0, parse=seconds, help="seconds after SIGTERM before exiting anyway"
    )
    # set by the worker supervisor (gateway.workers), not by people
    reuse_port: bool = internal(False)
    metrics_dir: str | None = internal(None)

    @property
    def history(self) -> int:
        """Deprecated name of :attr:`replay_buffer`."""
        return self.replay_buffer
