"""Who may open a WebSocket, decided before any WebSocket state exists, and
the token buckets that rate-limit connections and client messages. Sans-I/O:
times are passed in."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from http import HTTPStatus

__all__ = ["ConnectionRateLimiter", "Refusal", "TokenBucket"]


@dataclass(frozen=True, slots=True)
class Refusal:
    """A handshake refused: the HTTP status, a one-line reason, Retry-After."""

    status: HTTPStatus
    reason: str
    metric: str
    retry_after: int | None = None


class TokenBucket:
    """``rate`` tokens per second, at most ``burst`` saved up.

    A take needs one whole token, so the bucket holds at least one: with a
    rate below 1 per second (0.2: one connection every 5 s) a burst equal to
    the rate would never reach a whole token and refuse everything."""

    __slots__ = ("burst", "rate", "tokens", "updated")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate, self.burst = rate, max(1.0, burst)
        self.tokens, self.updated = self.burst, now

    def take(self, now: float) -> bool:
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False

    def wait(self) -> float:
        """Seconds until the next token."""
        return max(0.0, (1 - self.tokens) / self.rate)


class ConnectionRateLimiter:
    """A global and a per-IP bucket. The per-IP table is bounded (LRU), so a
    flood from many addresses costs a fixed amount of memory."""

    MAX_ADDRESSES = 100_000

    def __init__(self, per_second: float | None, per_ip_per_second: float | None) -> None:
        self.per_second = per_second
        self.per_ip = per_ip_per_second
        self.global_bucket: TokenBucket | None = None
        self.addresses: OrderedDict[str, TokenBucket] = OrderedDict()

    def admit(self, address: str, now: float) -> Refusal | None:
        if self.per_ip is not None:
            bucket = self.addresses.get(address)
            if bucket is None:
                bucket = self.addresses[address] = TokenBucket(self.per_ip, self.per_ip, now)
                if len(self.addresses) > self.MAX_ADDRESSES:
                    self.addresses.popitem(last=False)
            else:
                self.addresses.move_to_end(address)
            if not bucket.take(now):
                return _too_many("connection rate per address exceeded", "ip_rate", bucket)
        if self.per_second is not None:
            if self.global_bucket is None:
                self.global_bucket = TokenBucket(self.per_second, self.per_second, now)
            if not self.global_bucket.take(now):
                return _too_many("connection rate exceeded", "global_rate", self.global_bucket)
        return None


def _too_many(reason: str, metric: str, bucket: TokenBucket) -> Refusal:
    return Refusal(HTTPStatus.TOO_MANY_REQUESTS, reason, metric, max(1, round(bucket.wait())))


class Strikes:
    """Counts offences in a sliding window: ``add()`` is True past ``limit``."""

    __slots__ = ("limit", "times", "window")

    def __init__(self, limit: int, window: float) -> None:
        self.limit, self.window = limit, window
        self.times: list[float] = []

    def add(self, now: float) -> bool:
        self.times = [t for t in self.times if now - t <= self.window]
        self.times.append(now)
        return len(self.times) > self.limit
