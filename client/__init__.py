"""scorecast's Python client: a local, always-consistent view of topics.

Installable on its own (``pip install ./client``, distribution
``scorecast-client``): it needs websockets, msgspec and orjson, never nats-py,
aiohttp or prometheus-client. :mod:`scorecast.client.state` holds the sans-I/O
state logic; :mod:`scorecast.client.connection` owns the socket and retries;
:mod:`scorecast.client.sse` is the same client over Server-Sent Events (it
needs aiohttp: ``pip install './client[sse]'``).
"""

from scorecast.client.connection import (
    Backoff,
    ClientFailed,
    Occupancy,
    ScorecastClient,
    Status,
    TopicView,
    Update,
    run_watch,
)

__all__ = [
    "Backoff",
    "ClientFailed",
    "Occupancy",
    "ScorecastClient",
    "Status",
    "TopicView",
    "Update",
    "run_watch",
]
