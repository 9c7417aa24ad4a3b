"""Folds worker reports into the storm's time series and result document.

Sans-I/O. Workers send one ``tick`` per second (counter growth, gauges and
that second's histograms) and one ``final`` (totals); the parent adds the
publisher's counts and, when it can reach them, the gateways' own counters.
:meth:`StormResults.document` is what ``storm`` writes as JSON and what
``report`` draws.
"""

from __future__ import annotations

from scorecast.loadtest.histogram import LatencyHistogram, to_ms
from scorecast.loadtest.tally import COUNTERS, ERROR_COUNTERS, HISTOGRAMS

__all__ = ["GATEWAY_COUNTERS", "RESULT_VERSION", "StormResults"]

RESULT_VERSION = 1
# gateway counters compared with the clients' view (deltas over the run)
GATEWAY_COUNTERS = (
    "scorecast_connections_opened_total",
    "scorecast_connections_closed_total",
    "scorecast_messages_in_total",
    "scorecast_fanouts_total",
    "scorecast_deliveries_total",
    "scorecast_conflations_total",
    "scorecast_slow_closes_total",
    "scorecast_gaps_detected_total",
    "scorecast_gaps_unrepaired_total",
    "scorecast_errors_sent_total",
)


class _Second:
    __slots__ = (
        "connect",
        "counters",
        "delivery",
        "gateway",
        "processes",
        "published",
        "reports",
        "up",
    )

    def __init__(self) -> None:
        self.counters = dict.fromkeys((*COUNTERS, "pending"), 0)
        self.up = 0
        self.reports = 0
        self.delivery = LatencyHistogram()
        self.connect = LatencyHistogram()
        self.published = 0
        self.gateway: dict[str, float] | None = None
        self.processes: dict[str, dict[str, float]] = {}  # group -> /proc sample


class StormResults:
    def __init__(self, connections: int, workers: int) -> None:
        self.connections = connections
        self.workers = workers
        self.seconds: dict[int, _Second] = {}
        self.finals: dict[int, dict] = {}
        self.failures: list[str] = []
        self.gateway_before: dict[str, float] | None = None
        self.gateway_after: dict[str, float] | None = None
        self.publisher: dict = {}

    def _second(self, second: int) -> _Second:
        if second not in self.seconds:
            self.seconds[second] = _Second()
        return self.seconds[second]

    # --- input -----------------------------------------------------------------

    def add(self, message: dict) -> None:
        kind = message.get("kind")
        if kind == "tick":
            row = self._second(message["second"])
            for name in row.counters:
                row.counters[name] += message.get(name, 0)
            row.up += message["up"]
            row.reports += 1
            row.delivery.merge(message["delivery"])
            row.connect.merge(message["connect"])
        elif kind == "final":
            self.finals[message["worker"]] = message
        elif kind == "failed":
            self.failures.append(f"worker {message['worker']}: {message['error']}")

    def add_published(self, second: int, count: int) -> None:
        self._second(second).published += count

    def add_gateway(self, second: int, samples: dict[str, float]) -> None:
        self._second(second).gateway = samples

    def add_processes(self, second: int, group: str, sample: dict[str, float]) -> None:
        """A :class:`~loadtest.procstat.ProcessGroup` sample taken at the end of ``second``."""
        self._second(second).processes[group] = sample

    # --- output ----------------------------------------------------------------

    def row(self, second: int) -> dict:
        data = self.seconds.get(second) or _Second()
        counters = data.counters
        delivery, connect = data.delivery.quantiles((0.5, 0.9, 0.99)), data.connect
        row = {
            "t": second,
            "connections": data.up,
            "pending": counters["pending"],
            "attempts": counters["attempts"],
            "opened": counters["opened"],
            "msgs": counters["events"],
            "catch_up": counters["catch_up"],
            "snapshots": counters["snapshots"],
            "published": data.published,
            "errors": sum(counters[name] for name in ERROR_COUNTERS),
            **{name: counters[name] for name in (*ERROR_COUNTERS, "reconnects", "forced_drops")},
            "delivery_p50_ms": to_ms(delivery["p50"]),
            "delivery_p90_ms": to_ms(delivery["p90"]),
            "delivery_p99_ms": to_ms(delivery["p99"]),
            "delivery_max_ms": to_ms(data.delivery.max or None),
            "connect_p50_ms": to_ms(connect.quantile(0.5)),
            "connect_p99_ms": to_ms(connect.quantile(0.99)),
            "workers_reporting": data.reports,
        }
        previous = self.seconds.get(second - 1)
        for group, sample in data.processes.items():
            row[f"{group}_rss_mib"] = round(sample["rss_bytes"] / 2**20, 1)
            before = previous.processes.get(group) if previous is not None else None
            if before is not None and sample["at"] > before["at"]:
                # a process that ended takes its CPU seconds with it: never below 0
                used = max(0.0, sample["cpu_seconds"] - before["cpu_seconds"])
                row[f"{group}_cpu_cores"] = round(used / (sample["at"] - before["at"]), 3)
        if data.gateway is not None:
            row["gateway_connections"] = data.gateway.get("scorecast_connections")
            row["gateway_deliveries_total"] = data.gateway.get("scorecast_deliveries_total")
        return row

    def progress(self, second: int) -> str:
        row = self.row(second)
        gateway = row.get("gateway_connections")
        parts = [
            f"t={second + 1:>4}s",
            f"up {row['connections']:>7,}/{self.connections:,}",
            f"pending {row['pending']:>5,}",
            f"opened/s {row['opened']:>6,}",
            f"msgs/s {row['msgs']:>8,}",
            f"p50 {_show(row['delivery_p50_ms'])}",
            f"p99 {_show(row['delivery_p99_ms'])}",
            f"errors {row['errors']:,}",
        ]
        if gateway is not None:
            parts.append(f"gateway {int(gateway):,}")
        if row["workers_reporting"] < self.workers:
            parts.append(f"({row['workers_reporting']}/{self.workers} workers)")
        return "  ".join(parts)

    def totals(self) -> dict:
        totals: dict = dict.fromkeys(COUNTERS, 0)
        errors: dict[str, int] = {}
        histograms = {name: LatencyHistogram() for name in HISTOGRAMS}
        for final in self.finals.values():
            for name in COUNTERS:
                totals[name] += final.get(name, 0)
            for reason, count in final.get("errors", {}).items():
                errors[reason] = errors.get(reason, 0) + count
            for name, histogram in final.get("histograms", {}).items():
                histograms[name].merge(histogram)
        series = [self.row(second) for second in sorted(self.seconds) if second >= 0]
        peak = max((row["connections"] for row in series), default=0)
        reached = next((r["t"] + 1 for r in series if r["connections"] >= self.connections), None)
        totals.update(
            connections_target=self.connections,
            peak_connections=peak,
            seconds_to_target=reached,
            errors_total=sum(totals[name] for name in ERROR_COUNTERS),
            errors=errors,
            published=self.publisher.get("published", 0),
            publish_errors=self.publisher.get("errors", 0),
        )
        latency = {name: h.summary() for name, h in histograms.items()}
        return {"totals": totals, "latency": latency, "series": series}

    def gateway_delta(self) -> dict | None:
        if self.gateway_after is None:
            return None
        before = self.gateway_before or {}
        delta = {
            name: self.gateway_after.get(name, 0.0) - before.get(name, 0.0)
            for name in GATEWAY_COUNTERS
        }
        for name, value in self.gateway_after.items():
            if name.startswith("scorecast_handshakes_refused_total"):
                delta[name] = value - before.get(name, 0.0)
        return delta

    def document(self, settings: dict, machine: dict, started_at: str) -> dict:
        workers = [
            {
                key: final.get(key)
                for key in ("worker", "clients", "max_rss_kib", "cpu_user", "cpu_system")
            }
            for _, final in sorted(self.finals.items())
        ]
        return {
            "version": RESULT_VERSION,
            "started_at": started_at,
            "settings": settings,
            "machine": machine,
            **self.totals(),
            "gateway": self.gateway_delta(),
            "workers": workers,
            "failures": self.failures,
        }


def _show(ms: float | None) -> str:
    return "    -   " if ms is None else f"{ms:>7.1f}ms"
