"""Publisher settings: frozen objects built once at the edge and passed whole.

- :class:`PublisherSettings`: what every publisher shares (simulate, ingest,
  replay): where NATS is, how to log in, and the SCORES stream and feed-id
  bucket it creates or brings to this configuration;
- :class:`SimulatorSettings`, :class:`IngestSettings`, :class:`ReplaySettings`:
  each command's own.

Each field is declared once with its default, help line and how its flag is
read (:func:`scorecast.flags.setting`); the commands' flags are made from
them. ``stream_history`` was ``--history`` (still taken, with a warning):
the gateway's in-memory buffer is ``--replay-buffer``, a different thing.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass

from scorecast.flags import (
    amount,
    count,
    internal,
    positive,
    readable_file,
    seconds,
    setting,
)
from scorecast.flags import (
    port as tcp_port,
)
from scorecast.nats_settings import NatsSettings

__all__ = [
    "DUPLICATE_WINDOW",
    "FEED_ID_TTL",
    "IngestSettings",
    "PublisherSettings",
    "ReplaySettings",
    "SimulatorSettings",
    "replicas",
]

# (this module imports no NATS client: the command line reads it to make its flags)
DUPLICATE_WINDOW = 120.0  # seconds, PROTOCOL.md section 2
FEED_ID_TTL = 48 * 3600.0  # seconds feed ids are remembered; the contract's floor


def replicas(most: int) -> Callable[[str], int]:
    """A replica count, 1 to ``most``."""

    def parse(text: str) -> int:
        value = count(text)
        if value > most:
            raise argparse.ArgumentTypeError(f"{value} replicas: at most {most}")
        return value

    parse.__name__ = "integer"
    return parse


@dataclass(frozen=True, slots=True)
class PublisherSettings(NatsSettings):
    stream_history: int = setting(
        1000, parse=count, was="--history",
        help="messages kept per topic in the SCORES stream (JetStream max_msgs_per_subject)",
    )  # fmt: skip
    replicas: int = setting(1, parse=replicas(5), help="SCORES stream replicas (3 in production)")
    duplicate_window: float = setting(
        DUPLICATE_WINDOW, parse=positive, help="JetStream duplicate window, s (tests only)"
    )
    feed_id_ttl: float = setting(
        FEED_ID_TTL, parse=positive, help="seconds feed ids are remembered (>= 48 h)"
    )
    # timeouts
    setup_retry: float = setting(
        1.0,
        parse=positive,
        help="seconds between tries at setting up SCORES while JetStream is not ready",
    )


@dataclass(frozen=True, slots=True)
class SimulatorSettings:
    matches: int = setting(10, parse=count, help="concurrent matches")
    minute_seconds: float = setting(1.0, parse=positive, help="real seconds per match minute")
    seed: int | None = setting(
        None, parse=int, shown="random", help="random seed for a reproducible run"
    )
    event_rate: float | None = setting(
        None, parse=positive, shown="timed mode",
        help="load mode: events per second in total, instead of minute-seconds",
    )  # fmt: skip
    first_id: int = setting(1000, parse=amount, help="id of the first simulated match (match.<id>)")
    publish_retry: float = setting(
        0.5, parse=positive, help="seconds before a publish JetStream refused is tried again"
    )
    # off in tests that play matches to their end
    loops: bool = internal(True)


@dataclass(frozen=True, slots=True)
class IngestSettings:
    host: str = setting("127.0.0.1", help="listen address")
    port: int = setting(8090, parse=tcp_port, help="listen port")
    max_body: int = setting(1 << 20, parse=count, help="largest request body, bytes")
    max_batch: int = setting(1000, parse=count, help="most events in one request")
    jwt_secret: str | None = setting(None, help="HS256 secret; feed tokens required when set")
    jwt_public_key: str | None = setting(
        None, parse=readable_file, help="RS256/ES256 public key file (PEM) for feed tokens"
    )
    # timeouts and load
    header_timeout: float = setting(
        10.0, parse=positive, help="seconds to send a request's head (and idle keep-alive)"
    )
    body_timeout: float = setting(
        10.0, parse=positive, help="seconds to send a request's body (else 408)"
    )
    max_concurrent: int = setting(
        64, parse=count, help="requests at once (more: 503 before reading)"
    )


@dataclass(frozen=True, slots=True)
class ReplaySettings:
    speed: float = setting(1.0, parse=seconds, help="pace factor; 0 publishes as fast as possible")
    connect_timeout: float = setting(10.0, parse=positive, help="seconds before giving up on NATS")
