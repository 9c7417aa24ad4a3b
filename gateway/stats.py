"""The node's counters: plain integers bumped on the hot path, read by the
Prometheus collector at scrape time (so counting costs an addition, not a
lock). Sans-I/O."""

from __future__ import annotations

import bisect
import time
from typing import Any

__all__ = ["LATENCY_BUCKETS", "LATENCY_CEILING", "LATENCY_SKEW", "Stats"]

# publish-to-send latency, seconds (from the envelope's ts to the fan-out)
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
# A publisher's clock is not ours. A ts further ahead than LATENCY_SKEW is
# counted as a future timestamp (observed as 0); a delay above LATENCY_CEILING
# (or a ts that is not a finite number) is counted as absurd and observed as
# the ceiling, so that one bad envelope cannot swamp the histogram's sum.
LATENCY_SKEW = 0.5
LATENCY_CEILING = 60.0


class Stats:
    # the counters COUNTERS names, set to 0 in __init__ (declared for mypy)
    connections_opened: int
    connections_closed: int
    messages_in: int
    invalid_envelopes: int
    fanouts: int
    deliveries: int
    writes: int
    bytes_out: int
    errors_sent: int
    slow_clients: int
    conflations: int
    slow_closes: int
    gaps_detected: int
    gaps_repaired: int
    gaps_unrepaired: int
    snapshots_loaded: int
    recoveries_memory: int
    recoveries_jetstream: int
    abuse_closes: int
    rate_limited: int
    stream_resets: int
    latency_future: int
    latency_absurd: int
    slow_bytes_dropped: int

    COUNTERS = (
        "connections_opened",
        "connections_closed",
        "messages_in",
        "invalid_envelopes",
        "fanouts",
        "deliveries",
        "writes",
        "bytes_out",
        "errors_sent",
        "slow_clients",
        "conflations",
        "slow_closes",
        "gaps_detected",
        "gaps_repaired",
        "gaps_unrepaired",
        "snapshots_loaded",
        "recoveries_memory",
        "recoveries_jetstream",
        "abuse_closes",
        "rate_limited",
        "stream_resets",
        "latency_future",
        "latency_absurd",
        "slow_bytes_dropped",
    )

    def __init__(self) -> None:
        for name in self.COUNTERS:
            setattr(self, name, 0)
        self.latency_counts = [0] * (len(LATENCY_BUCKETS) + 1)
        self.latency_sum = 0.0
        self.refused: dict[str, int] = {}
        self.loop_lag_seconds = 0.0

    def refuse(self, reason: str) -> None:
        self.refused[reason] = self.refused.get(reason, 0) + 1

    def observe_latency(self, published_at: float) -> None:
        delay = time.time() - published_at
        if not 0.0 <= delay <= LATENCY_CEILING:  # also false for NaN
            if delay < 0.0:
                if delay < -LATENCY_SKEW:
                    self.latency_future += 1
                delay = 0.0
            else:
                self.latency_absurd += 1
                delay = LATENCY_CEILING
        self.latency_counts[bisect.bisect_left(LATENCY_BUCKETS, delay)] += 1
        self.latency_sum += delay

    def snapshot(self) -> dict[str, Any]:
        figures: dict[str, Any] = {name: getattr(self, name) for name in self.COUNTERS}
        figures.update(
            latency_counts=list(self.latency_counts),
            latency_sum=self.latency_sum,
            refused=dict(self.refused),
            loop_lag_seconds=self.loop_lag_seconds,
        )
        return figures
