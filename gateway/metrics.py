"""``/metrics`` in Prometheus text format.

Counters live as plain integers in :class:`gateway.stats.Stats`; this
collector reads them at scrape time. With ``--workers N`` each worker
publishes its figures to a shared folder once a second and any worker's
``/metrics`` sums the whole process group (see :mod:`gateway.workers`).

Two figures are not sums: ``scorecast_nats_connected`` is the minimum over
the workers (0 as soon as one of them has lost NATS: its clients get no
events), with ``scorecast_nats_connected_workers`` counting the connected
ones; ``scorecast_loop_lag_seconds`` is the worst worker's lag.
``scorecast_handshakes_refused_total`` has a series for every reason from the
first scrape (0), so that ``rate()`` sees the first refusal.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector, CollectorRegistry

from scorecast.gateway.stats import LATENCY_BUCKETS, Stats

__all__ = ["GAUGES", "REFUSAL_REASONS", "StatsCollector", "render"]

PREFIX = "scorecast_"
HELP = {
    "connections_opened": "WebSocket connections accepted",
    "connections_closed": "WebSocket connections ended",
    "messages_in": "messages received from NATS",
    "invalid_envelopes": "NATS messages dropped as not an envelope",
    "fanouts": "events fanned out (once per event, whatever the subscriber count)",
    "deliveries": "event frames queued to subscribers",
    "writes": "socket writes (frames coalesced per connection per tick)",
    "bytes_out": "bytes written to client sockets",
    "errors_sent": "error frames sent to clients",
    "slow_clients": "times a client went past the soft limit and started conflating",
    "conflations": "snapshots sent in place of skipped events",
    "slow_closes": "connections closed with 4008 (slow consumer)",
    "gaps_detected": "gaps in a topic's sequence seen on the live feed",
    "gaps_repaired": "gaps filled from JetStream",
    "gaps_unrepaired": "gaps answered with a snapshot",
    "snapshots_loaded": "topic snapshots read from JetStream",
    "recoveries_memory": "subscribe-since requests served from memory",
    "recoveries_jetstream": "JetStream reads to serve subscribe-since requests",
    "abuse_closes": "connections closed with 4000 (protocol abuse)",
    "rate_limited": "client messages refused as rate limited",
    "handshakes_refused": "handshakes refused, by reason",
    "nats_reconnects": "reconnections to NATS",
    "stream_resets": "times the SCORES stream was found reset (recreated, restored)",
    "latency_future": "envelopes whose ts was in the future (observed as 0)",
    "latency_absurd": "envelopes whose ts was absurdly old or not finite (observed as 60 s)",
    "slow_bytes_dropped": "bytes owed to slow consumers dropped when they were closed 4008",
    "topic_resets": "topics whose position went backwards on the live feed (re-synced)",
    "backfills_failed": "JetStream reads for recoveries that failed (never cached)",
    "replays_refused": "replays answered with a snapshot: over the connection's memory bound",
    "loop_restarts": "long-lived gateway loops that raised and were restarted",
    "tasks_failed": "gateway tasks that ended with an error (logged)",
}
# counters the node adds to the Stats ones (the core's and the supervisor's)
NODE_COUNTERS = (
    "topic_resets",
    "backfills_failed",
    "replays_refused",
    "loop_restarts",
    "tasks_failed",
)
GAUGES = {
    "connections": "open WebSocket connections",
    "subscriptions": "topic subscriptions held by connections",
    "topics": "topics this node is subscribed to (one NATS subscription each)",
    "topics_lingering": "topics nobody here holds, kept subscribed for --topic-linger",
    "slow_connections": "connections currently conflating",
    "nats_connected": "1 when every worker of this gateway is connected to NATS (min over workers)",
    "nats_connected_workers": "worker processes connected to NATS",
    "loop_lag_seconds": "event-loop lag, last measurement",
    "workers": "worker processes reporting",
    "backfill_cache_bytes": "bytes of JetStream reads kept for recoveries (bounded)",
}
# Every reason Gateway.admit() refuses a handshake with (its Refusal.metric);
# each is exported from the start. A reason not listed here still appears
# once it has been counted.
REFUSAL_REASONS = ("capacity", "draining", "global_rate", "ip_rate", "origin", "unauthorized")


class StatsCollector(Collector):
    """Sums the figures of every source (one per worker process)."""

    def __init__(self, sources: Callable[[], list[dict[str, Any]]]) -> None:
        self.sources = sources

    def collect(self) -> Iterable[Metric]:
        figures = self.sources()
        for name in (*Stats.COUNTERS, *NODE_COUNTERS):
            metric = CounterMetricFamily(PREFIX + name, HELP.get(name, name))
            metric.add_metric([], sum(f.get(name, 0) for f in figures))
            yield metric
        refused = CounterMetricFamily(
            PREFIX + "handshakes_refused", HELP["handshakes_refused"], labels=["reason"]
        )
        reasons: dict[str, int] = dict.fromkeys(REFUSAL_REASONS, 0)
        for figure in figures:
            for reason, count in figure.get("refused", {}).items():
                reasons[reason] = reasons.get(reason, 0) + count
        for reason, count in sorted(reasons.items()):
            refused.add_metric([reason], count)
        yield refused
        reconnects = CounterMetricFamily(PREFIX + "nats_reconnects", HELP["nats_reconnects"])
        reconnects.add_metric([], sum(f.get("nats_reconnects", 0) for f in figures))
        yield reconnects
        for name, text in GAUGES.items():
            gauge = GaugeMetricFamily(PREFIX + name, text)
            if name == "workers":
                gauge.add_metric([], len(figures))
            elif name == "nats_connected":
                gauge.add_metric([], min((f.get(name, 0) for f in figures), default=0))
            elif name == "nats_connected_workers":
                gauge.add_metric([], sum(f.get("nats_connected", 0) for f in figures))
            elif name == "loop_lag_seconds":
                gauge.add_metric([], max((f.get(name, 0.0) for f in figures), default=0.0))
            else:
                gauge.add_metric([], sum(f.get(name, 0) for f in figures))
            yield gauge
        yield _latency(figures)


def _latency(figures: list[dict[str, Any]]) -> Metric:
    counts = [0] * (len(LATENCY_BUCKETS) + 1)
    total = 0.0
    for figure in figures:
        for index, count in enumerate(figure.get("latency_counts", ())):
            counts[index] += count
        total += figure.get("latency_sum", 0.0)
    buckets, running = [], 0
    for bound, count in zip((*LATENCY_BUCKETS, float("inf")), counts, strict=True):
        running += count
        buckets.append(("+Inf" if bound == float("inf") else repr(bound), running))
    return HistogramMetricFamily(
        PREFIX + "publish_to_send_seconds",
        "from the envelope's ts (publisher clock) to the fan-out",
        buckets=buckets,
        sum_value=total,
    )


def render(sources: Callable[[], list[dict[str, Any]]]) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StatsCollector(sources))
    return generate_latest(registry)


TRANSPORT_HELP = {
    "sse_connections": ("gauge", "open Server-Sent Events streams"),
    "sse_frames_built": ("counter", "frames turned into SSE bytes (once each, shared)"),
    "sse_resumes": ("counter", "SSE requests resuming with Last-Event-ID"),
    "http_requests": ("counter", "/v1/topics requests answered"),
    "http_jetstream_reads": ("counter", "JetStream reads for /v1/topics (coalesced)"),
    "occupancy_reports_published": ("counter", "occupancy reports this node published"),
    "occupancy_reports_received": ("counter", "occupancy reports received from NATS"),
    "occupancy_nodes": ("gauge", "gateway nodes in the occupancy sum"),
}


class _TransportCollector(Collector):
    def __init__(self, figures: dict[str, int]) -> None:
        self.figures = figures

    def collect(self) -> Iterable[Metric]:
        for name, (kind, text) in TRANSPORT_HELP.items():
            family = CounterMetricFamily if kind == "counter" else GaugeMetricFamily
            metric = family(PREFIX + name, text)
            metric.add_metric([], self.figures.get(name, 0))
            yield metric


def render_transports(figures: dict[str, int]) -> bytes:
    """SSE, HTTP snapshot and occupancy figures of this worker."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_TransportCollector(figures))
    return generate_latest(registry)
