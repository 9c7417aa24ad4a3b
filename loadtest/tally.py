"""What one storm worker counts, bumped by its connections on the hot path.

Counters are plain integer attributes that only grow; once a second the
worker takes a :meth:`Tally.tick`: the growth since the last tick, the gauges,
and the latency histograms of that second (which then fold into the totals).
Sans-I/O.
"""

from __future__ import annotations

from scorecast.loadtest.histogram import LatencyHistogram

__all__ = ["COUNTERS", "ERROR_COUNTERS", "HISTOGRAMS", "Tally"]

COUNTERS = (
    "attempts",  # connection attempts started (first connects and reconnects)
    "opened",  # handshakes that got 101
    "subscribed",  # `subscribed` answers
    "connect_failures",  # attempts that ended without `subscribed`
    "drops",  # connections the client did not close itself and was not told to leave
    "hinted_reconnects",  # `reconnect` hints / close 1012 followed
    "forced_drops",  # connections this tool cut on purpose (mass reconnect)
    "reconnects",  # successful reconnects (`subscribed` after an earlier link)
    "events",  # events received (live and catch-up)
    "catch_up",  # of which published before the link that received them existed
    "snapshots",
    "pongs",
    "gaps",
    "duplicates",
    "backwards",
    "no_snapshot",
    "error_frames",
    "bytes_in",
)
# counters that are failures of the system under test
ERROR_COUNTERS = (
    "connect_failures",
    "drops",
    "gaps",
    "duplicates",
    "backwards",
    "no_snapshot",
    "error_frames",
)
# delivery: publish-to-receive of events published while the link was up;
# catch_up: the same for events replayed after a reconnect (publish -> receive,
# so mostly the time the client was away, not a delivery latency)
HISTOGRAMS = ("delivery", "catch_up", "connect", "subscribe", "first_snapshot")


class Tally:
    # the counters COUNTERS names, set to 0 in __init__ (declared for mypy)
    attempts: int
    opened: int
    subscribed: int
    connect_failures: int
    drops: int
    hinted_reconnects: int
    forced_drops: int
    reconnects: int
    events: int
    catch_up: int
    snapshots: int
    pongs: int
    gaps: int
    duplicates: int
    backwards: int
    no_snapshot: int
    error_frames: int
    bytes_in: int

    def __init__(self) -> None:
        for name in COUNTERS:
            setattr(self, name, 0)
        self.up = 0  # connections holding their subscriptions now
        self.pending = 0  # attempts in flight
        self.errors: dict[str, int] = {}  # reason -> count, for the result file
        self.window = {name: LatencyHistogram() for name in HISTOGRAMS}
        self.total = {name: LatencyHistogram() for name in HISTOGRAMS}
        self._last = dict.fromkeys(COUNTERS, 0)

    def error(self, reason: str) -> None:
        self.errors[reason] = self.errors.get(reason, 0) + 1

    def tick(self) -> dict:
        """Growth since the last tick, gauges, and this second's histograms."""
        now = {name: getattr(self, name) for name in COUNTERS}
        figures: dict = {name: now[name] - self._last[name] for name in COUNTERS}
        self._last = now
        figures["up"] = self.up
        figures["pending"] = self.pending
        for name, histogram in self.window.items():
            if name in ("delivery", "connect"):
                figures[name] = histogram.to_dict()
            self.total[name].merge(histogram)
        self.window = {name: LatencyHistogram() for name in HISTOGRAMS}
        return figures

    def totals(self) -> dict:
        figures: dict = {name: getattr(self, name) for name in COUNTERS}
        figures["errors"] = dict(self.errors)
        figures["histograms"] = {name: h.to_dict() for name, h in self.total.items()}
        return figures
