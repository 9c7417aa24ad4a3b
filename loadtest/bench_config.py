"""What one ``scorecast bench`` run does: a frozen settings object built by the CLI."""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = [
    "CONNECTIONS_PER_GENERATOR",
    "DEFAULT_SCENARIOS",
    "MAX_GENERATORS",
    "PER_PROCESS",
    "SCENARIOS",
    "SERVER_NAMES",
    "BenchConfig",
    "fleet_size",
]

SCENARIOS = ("hot", "many", "idle", "storm", "reconnect")
DEFAULT_SCENARIOS = SCENARIOS[:4]  # reconnect is asked for by name
SERVER_NAMES = ("scorecast", "floor", "nats", "naive")
PER_PROCESS = 15_000  # sockets one generator holds (open-file limit 20,000 per process)
CONNECTIONS_PER_GENERATOR = 12_000  # what --generators 0 plans for
MAX_GENERATORS = 200  # source addresses 127.0.1.1 .. 127.0.1.200


@dataclass(frozen=True, slots=True)
class BenchConfig:
    servers: tuple[str, ...] = SERVER_NAMES
    scenarios: tuple[str, ...] = DEFAULT_SCENARIOS
    # sizes: connections per scenario (None: ``connections``)
    connections: int = 1000
    hot_connections: int | None = None
    many_connections: int | None = None
    idle_connections: int | None = None
    storm_connections: int | None = None
    reconnect_connections: int | None = None
    # reconnect: events published while every connection is away
    reconnect_missed: int = 5
    # hot match: ``events`` on one topic, ``hot_rate`` per second, then a burst
    events: int = 100
    hot_rate: float = 20.0
    burst_events: int = 100
    # many matches: each connection on ``topics_per_connection`` of ``topics``
    topics: int = 500
    topics_per_connection: int = 10
    zipf: float = 1.0
    many_events: int = 2000
    many_rate: float = 400.0
    # connecting: handshakes in flight per generator process
    storm_window: int = 1000
    open_window: int = 200
    # processes
    generators: int = 0  # 0: one per 12,000 connections, at least one
    workers: int = 1
    gateway_args: tuple[str, ...] = ()
    nats_server_bin: str | None = None
    # pacing and patience, seconds
    settle: float = 0.5
    drain: float = 60.0
    open_timeout: float = 60.0
    state_bytes: int = 120
    seed: int = 1

    def size(self, scenario: str) -> int:
        own = getattr(self, f"{scenario}_connections")
        return self.connections if own is None else own


def fleet_size(config: BenchConfig) -> int:
    """Generator processes of a run: ``generators``, or enough for the largest scenario."""
    if config.generators:
        return config.generators
    largest = max(config.size(scenario) for scenario in config.scenarios)
    return max(1, math.ceil(largest / CONNECTIONS_PER_GENERATOR))
