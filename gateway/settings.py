"""Gateway settings: one frozen object, built once at the edge (CLI and
environment) and passed down. No other module reads the environment."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field

from scorecast.protocol.nats_auth import NatsAuth

__all__ = ["GatewaySettings"]


def _node_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


@dataclass(frozen=True, slots=True)
class GatewaySettings:
    # where
    nats: tuple[str, ...] = ("nats://127.0.0.1:4222",)
    host: str = "127.0.0.1"
    port: int = 8080
    workers: int = 1
    node: str = field(default_factory=_node_name)
    # NATS credentials (PROTOCOL.md section 9); all None: anonymous
    nats_creds: str | None = None
    nats_user: str | None = None
    nats_password: str | None = None
    nats_token: str | None = None
    nats_tls_ca: str | None = None
    # protocol
    heartbeat: float = 20.0
    history: int = 256
    coalesce: float = 0.0
    # other transports: seconds an HTTP cache may serve /v1/topics answers
    http_max_age: float = 1.0
    # occupancy: seconds between this node's count reports on NATS
    occupancy_interval: float = 1.0
    # limits (None means no limit)
    max_message_size: int = 64 * 1024
    max_topics_per_request: int = 100
    max_topics_per_connection: int = 500
    # None: the open-file limit less a reserve (see gateway.server)
    max_connections: int | None = None
    # slow clients
    soft_limit: int = 256 * 1024
    hard_limit: int = 4 * 1024 * 1024
    slow_grace: float = 30.0
    # SO_SNDBUF asked for each client socket (the kernel doubles it); 0 keeps
    # the kernel's autotuning, which lets one stalled socket hold ~4 MB
    socket_send_buffer: int = 64 * 1024
    # abuse: more than this many malformed messages within a minute closes 4000
    max_malformed_per_minute: int = 10
    # access
    jwt_secret: str | None = None
    jwt_public_key: str | None = None
    allowed_origins: tuple[str, ...] = ()
    handshake_timeout: float = 10.0
    messages_per_second: float = 20.0
    message_burst: int = 40
    connections_per_second: float | None = None
    connections_per_ip_per_second: float | None = None
    # load balancers whose X-Forwarded-For is believed (CIDRs or addresses)
    trusted_proxies: tuple[str, ...] = ()
    # lifecycle
    drain_window: float = 10.0
    drain_deadline: float = 30.0
    # set by the worker supervisor (gateway.workers), not by people
    reuse_port: bool = False
    metrics_dir: str | None = None

    def nats_auth(self) -> NatsAuth:
        return NatsAuth(
            creds=self.nats_creds,
            user=self.nats_user,
            password=self.nats_password,
            token=self.nats_token,
            tls_ca=self.nats_tls_ca,
        )
