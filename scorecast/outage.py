"""Waiting for NATS without flooding the log.

Every command that connects to NATS (gateway, simulate, ingest, replay) waits
here until one of its servers answers, so that an outage at start-up is one
warning naming the URLs, then a summary at most every ``SUMMARY_EVERY``
seconds, then one line when NATS answers. The wait is a plain coroutine:
cancelling it (SIGTERM, SIGINT) stops it at once.

A server "answers" when a TCP connection to it gets the ``INFO`` line every
nats-server sends first; no credentials are needed for that, so the real
client connects afterwards with whatever options it has.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from urllib.parse import urlsplit

__all__ = ["OutageLog", "display_urls", "split_servers", "wait_for_nats"]

SUMMARY_EVERY = 30.0  # seconds between two "still unreachable" lines
PROBE_TIMEOUT = 1.0
FIRST_DELAY, MAX_DELAY = 0.25, 2.0
DEFAULT_PORT = 4222


def split_servers(nats_url: str | Sequence[str]) -> list[str]:
    """One URL, several separated by commas, or a sequence of them: a list."""
    entries = [nats_url] if isinstance(nats_url, str) else list(nats_url)
    return [url.strip() for entry in entries for url in entry.split(",") if url.strip()]


def display_urls(servers: Sequence[str]) -> str:
    """The servers as a log may show them: without user names or passwords."""
    shown = []
    for url in servers:
        parts = urlsplit(url if "://" in url else f"nats://{url}")
        host = parts.hostname or "?"
        shown.append(f"{parts.scheme}://{host}:{parts.port or DEFAULT_PORT}")
    return ",".join(shown)


class OutageLog:
    """Logs an outage once, then a summary at most every ``every`` seconds,
    then its end. ``clock`` is any monotonic clock (tests pass their own)."""

    def __init__(
        self,
        logger: logging.Logger,
        who: str,
        servers: Sequence[str],
        *,
        every: float = SUMMARY_EVERY,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger, self.who, self.urls = logger, who, display_urls(servers)
        self.every, self.clock = every, clock
        self.since: float | None = None
        self.failures = 0
        self._reported = 0.0

    def failed(self, error: BaseException | str) -> bool:
        """One failed attempt; True when it was logged."""
        now = self.clock()
        self.failures += 1
        if self.since is None:
            self.since = self._reported = now
            self.logger.warning(
                "%s: NATS not reachable at %s (%s); retrying, a summary every %.0f s",
                self.who,
                self.urls,
                _describe(error),
                self.every,
                extra={"event": "nats_unreachable", "nats": self.urls},
            )
            return True
        if now - self._reported < self.every:
            return False
        self._reported = now
        self.logger.warning(
            "%s: NATS still not reachable at %s after %.0f s (%d attempts; last: %s)",
            self.who,
            self.urls,
            now - self.since,
            self.failures,
            _describe(error),
            extra={"event": "nats_unreachable", "nats": self.urls, "attempts": self.failures},
        )
        return True

    def recovered(self) -> None:
        if self.since is None:
            return
        self.logger.info(
            "%s: NATS at %s reachable again after %.0f s",
            self.who,
            self.urls,
            self.clock() - self.since,
            extra={"event": "nats_reachable", "nats": self.urls},
        )
        self.since, self.failures = None, 0


async def _answers(url: str) -> None:
    """Return when ``url`` answers like a nats-server; raise OSError if not."""
    parts = urlsplit(url if "://" in url else f"nats://{url}")
    host, port = parts.hostname or "127.0.0.1", parts.port or DEFAULT_PORT
    async with asyncio.timeout(PROBE_TIMEOUT):
        reader, writer = await asyncio.open_connection(host, port)
        try:
            if parts.scheme in ("ws", "wss"):
                return  # a WebSocket listener says nothing first
            line = await reader.readline()
            if not line.startswith(b"INFO"):
                raise OSError(f"{host}:{port} answered, but not as a nats-server")
        finally:
            writer.close()


async def wait_for_nats(servers: Sequence[str], log: OutageLog) -> None:
    """Return once one of ``servers`` answers; retries forever with backoff."""
    delay = FIRST_DELAY
    while True:
        error: BaseException | None = None
        for url in servers:
            try:
                await _answers(url)
            except (OSError, TimeoutError) as exc:
                error = exc
                continue
            log.recovered()
            return
        log.failed(error or "no servers")
        await asyncio.sleep(delay)
        delay = min(delay * 2, MAX_DELAY)


def _describe(error: BaseException | str) -> str:
    if isinstance(error, str):
        return error
    if isinstance(error, TimeoutError):
        return "timed out"
    text = getattr(error, "strerror", None) or str(error) or type(error).__name__
    return text
