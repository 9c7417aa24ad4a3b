"""A latency histogram with logarithmic buckets, cheap to fill and to merge.

Sixteen buckets per power of two of microseconds (about 4.4 % wide), kept
sparse as ``{bucket: count}``, so workers ship one small dict per second and
the parent adds them up. Percentiles are read back to within a bucket.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

__all__ = ["LatencyHistogram", "to_ms"]

SUB_BUCKETS = 16
_SCALE = SUB_BUCKETS / math.log(2)


class LatencyHistogram:
    __slots__ = ("buckets", "count", "max", "total")

    def __init__(self) -> None:
        self.buckets: dict[int, int] = {}
        self.count = 0
        self.total = 0.0
        self.max = 0.0

    def record(self, seconds: float) -> None:
        # clocks of publisher and receiver are one machine's, but ts may still
        # be a hair ahead: such a value counts as the smallest bucket
        micros = seconds * 1e6
        index = int(math.log(micros) * _SCALE) if micros > 1.0 else 0
        buckets = self.buckets
        buckets[index] = buckets.get(index, 0) + 1
        self.count += 1
        self.total += seconds
        if seconds > self.max:
            self.max = seconds

    def merge(self, other: LatencyHistogram | Mapping) -> None:
        if isinstance(other, LatencyHistogram):
            other = other.to_dict()
        for index, count in other.get("buckets", {}).items():
            index = int(index)
            self.buckets[index] = self.buckets.get(index, 0) + count
        self.count += other.get("count", 0)
        self.total += other.get("total", 0.0)
        self.max = max(self.max, other.get("max", 0.0))

    @staticmethod
    def bucket_value(index: int) -> float:
        """The middle of a bucket, in seconds."""
        return math.exp((index + 0.5) / _SCALE) / 1e6

    def quantile(self, q: float) -> float | None:
        if not self.count:
            return None
        if q >= 1.0:
            return self.max
        rank = q * self.count
        running = 0
        for index in sorted(self.buckets):
            running += self.buckets[index]
            if running >= rank:
                return min(self.bucket_value(index), self.max)
        return self.max

    def quantiles(self, qs: Iterable[float] = (0.5, 0.9, 0.99, 0.999)) -> dict[str, float | None]:
        return {f"p{q * 100:g}": self.quantile(q) for q in qs}

    def summary(self) -> dict:
        """Count, mean, max and percentiles in milliseconds, for people and JSON."""
        mean = self.total / self.count if self.count else None
        figures = {"count": self.count, "mean_ms": to_ms(mean), "max_ms": to_ms(self.max or None)}
        figures.update({k + "_ms": to_ms(v) for k, v in self.quantiles().items()})
        return figures

    def to_dict(self) -> dict:
        return {
            "buckets": dict(self.buckets),
            "count": self.count,
            "total": self.total,
            "max": self.max,
        }

    @classmethod
    def from_dict(cls, data: Mapping) -> LatencyHistogram:
        histogram = cls()
        histogram.merge(data)
        return histogram


def to_ms(seconds: float | None, digits: int = 3) -> float | None:
    """Seconds as rounded milliseconds; None stays None (nothing was measured)."""
    return None if seconds is None else round(seconds * 1000, digits)
