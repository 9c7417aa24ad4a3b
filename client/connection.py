"""The Python asyncio client: a local, always-consistent view of topics.

::

    async with ScorecastClient("ws://127.0.0.1:8080/ws", topics=["match.4711"]) as client:
        async for update in client.updates():
            print(update.topic, update.seq, update.kind, update.state)

The state logic lives in :mod:`scorecast.client.state` (sans-I/O); this module
owns the socket, the clocks and the retries:

- connects with a token (``Authorization: Bearer`` by default, ``?token=`` on
  request), resubscribes every topic on each new connection with ``since`` =
  the last position it holds, so a reconnect loses and repeats nothing;
- retries with exponential backoff and full jitter, waiting at least as long
  as a ``Retry-After`` on HTTP 429/503 and exactly as long as a ``reconnect``
  hint says when a gateway drains;
- sends application ``ping`` heartbeats and drops a connection whose pongs
  stop coming.

Errors::

    ScorecastError (protocol.errors)
    └── ClientFailed   the client stopped for good: credentials refused,
                       origin refused (1008), or a URL it cannot use
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import inspect
import logging
import random
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any, Final, Protocol
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI

from scorecast.client.state import (
    Authed,
    ClientState,
    GatewayError,
    ReconnectHint,
    Send,
    TopicView,
    Update,
    Welcomed,
)
from scorecast.protocol.errors import CloseCode, ScorecastError

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

log = logging.getLogger("scorecast.client")

TokenSource = str | Callable[[], str | Awaitable[str]] | None


class _End(enum.Enum):
    CLOSED = "closed"  # put in every updates() queue when the client stops


_CLOSED: Final = _End.CLOSED
GAP_BATCH = 0.01  # gaps seen within this many seconds of the first: one resubscribe
RATE_LIMITED_RETRY, RATE_LIMITED_RETRY_MAX = 1.0, 30.0  # seconds, doubling, jittered


_CONNECTION_CODES = {"connection_failed", "handshake_refused", "client_failed"}


class Socket(Protocol):
    """What the connection loop needs of an open connection: a websockets
    ``ClientConnection``, or the SSE client's stream."""

    async def send(self, message: str, /) -> None: ...
    async def close(self, code: int = ..., reason: str = ...) -> None: ...


@dataclass(frozen=True, slots=True)
class Occupancy:
    """An ``occupancy`` gauge: subscriptions to ``topic`` on every gateway."""

    topic: str
    subscribers: int
    ts: float | None


class ClientFailed(ScorecastError):
    """The client stopped for good; ``status`` is the HTTP status or close code."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class Status(enum.StrEnum):
    CONNECTING = "connecting"
    CONNECTED = "connected"
    RECONNECTING = "reconnecting"
    DRAINING = "draining"
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential backoff with full jitter: uniform(0, min(max, min * factor**n))."""

    min_delay: float = 0.5
    max_delay: float = 20.0
    factor: float = 2.0

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        ceiling = min(self.max_delay, self.min_delay * self.factor ** min(attempt, 64))
        return (rng or random).uniform(0, ceiling)


def retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or HTTP-date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError):
        return None
    return max(0.0, when - (time.time() if now is None else now))


class ScorecastClient:
    """One connection to a gateway, kept alive, and a view per topic.

    ``token`` is a JWT string, or a callable (sync or async) that returns a
    fresh one for each connection attempt; with a callable, a refused token
    is retried, with a string it stops the client. ``on_update(update)`` and
    ``on_status(status)`` are called on the event loop: keep them quick.

    ``on_error(error)`` gets a :class:`GatewayError` for each ``error`` frame,
    and one for each failed connection attempt too, with ``request_id``
    None and ``code`` ``connection_failed`` (network, timeout, a broken
    handshake) or ``handshake_refused`` (an HTTP status; ``message`` says
    which and why), or ``client_failed`` when the client stops for good.
    """

    def __init__(
        self,
        url: str,
        *,
        token: TokenSource = None,
        topics: Iterable[str] = (),
        on_update: Callable[[Update], Any] | None = None,
        on_status: Callable[[Status], Any] | None = None,
        on_error: Callable[[GatewayError], Any] | None = None,
        on_occupancy: Callable[[Occupancy], Any] | None = None,
        occupancy: bool = False,
        token_in_query: bool = False,
        backoff: Backoff = Backoff(),
        ping_interval: float | None = None,
        ping_timeout: float | None = None,
        open_timeout: float = 10.0,
        max_message_size: int | None = 4 * 1024 * 1024,
        max_queue: int = 10_000,
        max_topics_per_request: int | None = None,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("ws", "wss") or not parts.hostname:
            raise ValueError(f"a gateway URL is ws://HOST[:PORT]/ws or wss://..., not {url!r}")
        self.url = url
        self.token = token
        self.token_in_query = token_in_query
        self.backoff = backoff
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.open_timeout = open_timeout
        self.max_message_size = max_message_size
        self.max_queue = max_queue
        self.on_update, self.on_status, self.on_error = on_update, on_status, on_error
        # occupancy: ask for it with every subscribe; the latest gauge per topic
        self.occupancy, self.on_occupancy = occupancy, on_occupancy
        self.subscribers: dict[str, int] = {}
        self.state = ClientState(topics, max_topics_per_request=max_topics_per_request)
        self.status = Status.CLOSED
        self.reconnects = 0
        self.dropped_updates = 0
        # the last handshake refusal: (HTTP status, Retry-After seconds or None)
        self.last_refusal: tuple[int, float | None] | None = None
        self.failure: ClientFailed | None = None
        self._ws: Socket | None = None
        self._task: asyncio.Task[None] | None = None
        self._queues: set[asyncio.Queue[Update | _End]] = set()
        self._tick = asyncio.Event()
        self._closing = False
        # auth requests in flight: request id -> the future refresh_token awaits
        self._auths: dict[int, asyncio.Future[int]] = {}
        self._flusher: asyncio.Task[None] | None = None  # queued resubscribes
        self._limited = 0  # rate_limited answers in a row
        self.connected_once = False  # welcomed by a gateway at least once
        self.last_error: GatewayError | None = None  # the latest given to on_error

    # --- lifecycle ------------------------------------------------------------

    async def __aenter__(self) -> ScorecastClient:
        self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def start(self) -> None:
        """Connect in the background; reconnects until ``close()``."""
        if self._task is None:
            self._closing = False
            self._set_status(Status.CONNECTING)
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def close(self) -> None:
        self._closing = True
        task, self._task = self._task, None
        if self._ws is not None:
            with contextlib.suppress(Exception):
                await self._ws.close(CloseCode.NORMAL, "client closing")
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, ClientFailed):
                await task
        self._set_status(Status.CLOSED)
        self._wake(_CLOSED)

    async def wait_closed(self) -> None:
        """Wait until the client stops; raises :class:`ClientFailed` if it failed."""
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(self._task)
        if self.failure is not None:
            raise self.failure

    # --- topics ---------------------------------------------------------------

    async def subscribe(self, *topics: str) -> None:
        """Hold ``topics``: a snapshot (or a resume) and then live updates."""
        await self._send(self.state.subscribe(topics))

    async def unsubscribe(self, *topics: str) -> None:
        """Stop ``topics`` and forget their state."""
        await self._send(self.state.unsubscribe(topics))

    def view(self, topic: str) -> TopicView | None:
        """The local view of ``topic`` (``seq`` None until its first snapshot)."""
        return self.state.view(topic)

    def get(self, topic: str) -> Any:
        """The current state of ``topic``, or None."""
        view = self.state.view(topic)
        return None if view is None else view.state

    @property
    def topics(self) -> list[str]:
        return self.state.topics

    # --- consuming updates ------------------------------------------------------

    def updates(self) -> AsyncIterator[Update]:
        """Every update from now on, in order, until ``close()``.

        Each iterator has its own queue of at most ``max_queue`` updates; when
        a consumer falls that far behind, its oldest updates are dropped
        (counted in ``dropped_updates``): the views stay exact regardless.
        """
        queue: asyncio.Queue[Update | _End] = asyncio.Queue()
        self._queues.add(queue)
        return self._drain(queue)

    async def _drain(self, queue: asyncio.Queue[Update | _End]) -> AsyncIterator[Update]:
        try:
            while True:
                if (self._closing or self.failure is not None) and queue.empty():
                    item: Update | _End = _CLOSED
                else:
                    item = await queue.get()
                if item is _CLOSED:
                    if self.failure is not None:
                        raise self.failure
                    return
                yield item
        finally:
            self._queues.discard(queue)

    async def wait_for(
        self, topic: str, predicate: Callable[[TopicView], bool], timeout: float = 10.0
    ) -> TopicView:
        """Wait until ``predicate(view)`` holds for ``topic``; TimeoutError if not."""
        deadline = time.monotonic() + timeout
        while True:
            tick = self._tick
            view = self.state.view(topic)
            if view is not None and view.seq is not None and predicate(view):
                return view
            if self.failure is not None:
                raise self.failure
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"{topic}: condition not met within {timeout} s; view {view}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(tick.wait(), remaining)

    # --- the connection loop ------------------------------------------------------

    async def _run(self) -> None:
        attempt = 0
        try:
            while not self._closing:
                delay: float | None = None
                hinted = False
                try:
                    ws = await self._connect()
                except InvalidStatus as exc:
                    delay = self._refused(exc, attempt)
                except (OSError, TimeoutError, InvalidHandshake, ConnectionClosed) as exc:
                    log.info("connecting to %s failed: %s", self.url, exc)
                    why = str(exc) or type(exc).__name__
                    self._report(GatewayError("connection_failed", f"{self.url}: {why}", None))
                else:
                    try:
                        delay, welcomed = await self._session(ws)
                    except (ClientFailed, asyncio.CancelledError):
                        raise
                    except Exception:  # a bug must not end the client: log, go on
                        log.exception("connection to %s failed", self.url)
                        await ws.close(CloseCode.INTERNAL_ERROR, "client error")
                        delay, welcomed = None, False
                    hinted = delay is not None
                    attempt = 0 if welcomed else attempt
                if self._closing:
                    break
                if delay is None:
                    delay = self.backoff.delay(attempt)
                    attempt += 1
                self._set_status(Status.DRAINING if hinted else Status.RECONNECTING)
                await asyncio.sleep(delay)
                self.reconnects += 1
        except ClientFailed as exc:
            # no re-raise: nobody may await this task; wait_closed() and
            # updates() raise it to whoever listens
            self.failure = exc
            log.error("scorecast client stopped: %s", exc)
            self._report(GatewayError("client_failed", str(exc), None))
            self._set_status(Status.CLOSED)
            self._wake(_CLOSED)

    def _refused(self, exc: InvalidStatus, attempt: int) -> float | None:
        response = exc.response
        status = response.status_code
        why = response.body.decode(errors="replace").strip()[:200] if response.body else ""
        if status == 403 or (status == 401 and not callable(self.token)):
            # an origin refused, or a fixed token refused: retrying cannot help
            raise ClientFailed(f"gateway refused this client: HTTP {status} {why}", status)
        wait = retry_after(response.headers.get("Retry-After"))
        self.last_refusal = (status, wait)
        log.info("gateway answered HTTP %s %s; retry after %s", status, why, wait)
        self._report(GatewayError("handshake_refused", f"HTTP {status} {why}".strip(), None))
        if wait is None:
            return None  # backoff
        return max(wait, self.backoff.delay(attempt))

    async def _connect(self) -> Socket:
        url, headers = self.url, {}
        token = self.token() if callable(self.token) else self.token
        if inspect.isawaitable(token):
            token = await token
        if token and self.token_in_query:
            parts = urlsplit(url)
            query = [*parse_qsl(parts.query), ("token", token)]
            url = urlunsplit(parts._replace(query=urlencode(query)))
        elif token:
            headers["Authorization"] = f"Bearer {token}"
        try:
            return await connect(
                url,
                additional_headers=headers,
                compression=None,
                open_timeout=self.open_timeout,
                ping_interval=None,  # heartbeats are application pings, below
                close_timeout=2,
                max_size=self.max_message_size,
            )
        except InvalidURI as exc:
            raise ClientFailed(str(exc)) from None

    async def _session(self, ws: Socket) -> tuple[float | None, bool]:
        """Serve one connection; (seconds a reconnect hint asks to wait, welcomed)."""
        assert isinstance(ws, ClientConnection)  # what _connect opened
        self._ws = ws
        hint_at: float | None = None
        welcomed = False
        helpers: list[asyncio.Task[None]] = []
        try:
            await self._send(self.state.connection_made())
            helpers.append(asyncio.create_task(self._heartbeat(ws)))
            async for raw in ws:
                try:
                    message = orjson.loads(raw)
                except orjson.JSONDecodeError:
                    self.state.counters.bad_frames += 1
                    continue
                limited = False
                if type(message) is dict and message.get("type") == "occupancy":
                    self._occupancy(message)
                    continue
                for output in self.state.receive(message):
                    if isinstance(output, Update):
                        self._deliver(output)
                    elif isinstance(output, Send):
                        await ws.send(self._encode(output))
                    elif isinstance(output, Welcomed):
                        welcomed = self.connected_once = True
                        self._set_status(Status.CONNECTED)
                    elif isinstance(output, ReconnectHint):
                        hint_at = time.monotonic() + output.after_ms / 1000
                        log.info(
                            "gateway draining (%s): reconnect in %d ms",
                            output.reason,
                            output.after_ms,
                        )
                        self._set_status(Status.DRAINING)
                        helpers.append(asyncio.create_task(self._leave(ws, output.after_ms)))
                    elif isinstance(output, Authed):
                        self._settle(output.request_id, output.exp)
                    elif isinstance(output, GatewayError):
                        limited = limited or output.code == "rate_limited"
                        if output.request_id in self._auths:
                            self._settle(output.request_id, ClientFailed(output.message))
                        self._report(output)
                if isinstance(message, dict) and message.get("type") == "subscribed":
                    self._limited = 0
                self._schedule_flush(limited)
        except ConnectionClosed:
            pass
        finally:
            for helper in helpers:
                helper.cancel()
            if self._flusher is not None:
                self._flusher.cancel()
                self._flusher = None
            self._ws = None
            self.state.connection_lost()
            for request_id in list(self._auths):
                self._settle(request_id, ConnectionError("the connection closed first"))
        self._check_close(ws)
        return (None if hint_at is None else max(0.0, hint_at - time.monotonic())), welcomed

    async def refresh_token(self, token: str, timeout: float = 10.0) -> int:
        """Give the open connection a fresh token (the ``auth`` message), so it
        outlives the old token's ``exp`` without a reconnect. Returns the new
        ``exp``; raises :class:`ClientFailed` when the gateway refuses it, or
        ``ConnectionError`` when there is no open connection. Later
        reconnects use ``self.token`` as before: make it a callable that
        returns the newest token."""
        if self._ws is None:
            raise ConnectionError("not connected: the next connection sends the token")
        send = self.state.authenticate(token)
        request_id = send.message["id"]
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._auths[request_id] = future
        try:
            await self._ws.send(orjson.dumps(send.message).decode())
            return await asyncio.wait_for(future, timeout)
        finally:
            self._auths.pop(request_id, None)

    def _settle(self, request_id: int, result: int | Exception) -> None:
        future = self._auths.get(request_id)
        if future is None or future.done():
            return
        if isinstance(result, Exception):
            future.set_exception(result)
        else:
            future.set_result(result)

    def _check_close(self, ws: ClientConnection) -> None:
        code, reason = ws.close_code, ws.close_reason
        if self._closing:
            return
        log.info("connection closed: %s %s", code, reason)
        if code == CloseCode.POLICY:
            raise ClientFailed(f"gateway refused this client (1008 policy): {reason}", code)

    async def _leave(self, ws: ClientConnection, after_ms: int) -> None:
        """A draining gateway closes soon; leave at the hinted time if it has not."""
        await asyncio.sleep(after_ms / 1000)
        await ws.close(CloseCode.NORMAL, "reconnecting as the gateway asked")

    async def _heartbeat(self, ws: ClientConnection) -> None:
        while True:
            interval = self.ping_interval or self.state.heartbeat or 20.0
            await asyncio.sleep(interval)
            now = time.monotonic()
            if self.state.ping_overdue(now, self.ping_timeout or interval):
                log.info("no pong within %.1f s: reconnecting", self.ping_timeout or interval)
                await ws.close(CloseCode.NORMAL, "heartbeat timeout")
                return
            await ws.send(orjson.dumps(self.state.ping(now).message).decode())

    def _schedule_flush(self, limited: bool) -> None:
        """Send the queued resubscribes as one request: soon after a gap,
        later (doubling, jittered) after a ``rate_limited`` answer."""
        if not self.state.resubscribe_due:
            return
        if limited:
            ceiling = min(RATE_LIMITED_RETRY_MAX, RATE_LIMITED_RETRY * 2**self._limited)
            self._limited += 1
            delay = random.uniform(ceiling / 2, ceiling)
            if self._flusher is not None:
                self._flusher.cancel()
        elif self._flusher is None:
            delay = GAP_BATCH
        else:
            return  # one is due already
        self._flusher = asyncio.get_running_loop().create_task(self._flush_after(delay))

    async def _flush_after(self, delay: float) -> None:
        await asyncio.sleep(delay)
        self._flusher = None
        await self._send(self.state.flush())

    async def _send(self, frames: list[Send]) -> None:
        ws = self._ws
        if ws is None:
            return  # sent on the next connection, with the rest
        for frame in frames:
            try:
                await ws.send(self._encode(frame))
            except ConnectionClosed:
                return  # the session ends; connection_made resends everything

    def _encode(self, frame: Send) -> str:
        message = frame.message
        if self.occupancy and message.get("type") == "subscribe":
            message = {**message, "occupancy": True}
        return orjson.dumps(message).decode()

    # --- fan-out to the application -------------------------------------------

    def _occupancy(self, message: dict[str, Any]) -> None:
        topic, subscribers = message.get("topic"), message.get("subscribers")
        if topic not in self.state.views or type(subscribers) is not int:
            return
        self.subscribers[topic] = subscribers
        if self.on_occupancy is not None:
            ts = message.get("ts")
            try:
                self.on_occupancy(Occupancy(topic, subscribers, ts))
            except Exception:
                log.exception("on_occupancy raised; the client goes on")

    def _deliver(self, update: Update) -> None:
        self._wake(update)
        if self.on_update is not None:
            try:
                self.on_update(update)
            except Exception:
                log.exception("on_update raised; the client goes on")

    def _wake(self, item: Update | _End) -> None:
        tick, self._tick = self._tick, asyncio.Event()
        tick.set()
        for queue in self._queues:
            if item is not _CLOSED and queue.qsize() >= self.max_queue:
                queue.get_nowait()
                self.dropped_updates += 1
            queue.put_nowait(item)

    def _report(self, error: GatewayError) -> None:
        self.last_error = error
        if error.code not in _CONNECTION_CODES:  # those are logged where they happen
            log.warning("gateway error %s: %s %s", error.code, error.message, error.topics or "")
        if self.on_error is not None:
            try:
                self.on_error(error)
            except Exception:
                log.exception("on_error raised; the client goes on")

    def _set_status(self, status: Status) -> None:
        if status is self.status:
            return
        self.status = status
        if self.on_status is not None:
            try:
                self.on_status(status)
            except Exception:
                log.exception("on_status raised; the client goes on")


async def run_watch(
    url: str,
    topics: list[str],
    *,
    token: str | None = None,
    count: int | None = None,
    seconds: float | None = 300.0,
    out: Callable[[str], Any] = print,
    stop: asyncio.Event | None = None,
    sse: bool = False,
) -> int:
    """``scorecast watch``: print each update as one JSON line; stop after
    ``count`` updates, ``seconds`` (None: no limit) or ``stop``. Exit status
    0; 1 when the gateway refused the client for good, or when no gateway
    ever welcomed it (the reason goes to stderr, one line). ``sse``: over
    Server-Sent Events (``GET /sse``) instead of a WebSocket."""
    if not topics:
        raise ValueError("name at least one topic to watch, e.g. football.live")
    seen = 0
    opened: ScorecastClient
    if sse:
        from scorecast.client.sse import SseClient

        opened = SseClient(url, token=token, topics=topics)
    else:
        opened = ScorecastClient(url, token=token, topics=topics)
    async with opened as client:
        closer = None
        if stop is not None:

            async def close_on_stop() -> None:
                await stop.wait()
                await client.close()

            closer = asyncio.get_running_loop().create_task(close_on_stop())
        try:
            async with asyncio.timeout(seconds):
                async for update in client.updates():
                    line = {
                        "topic": update.topic,
                        "seq": update.seq,
                        "kind": update.kind,
                        "ts": update.ts,
                        "data": update.data,
                        "state": update.state,
                    }
                    out(orjson.dumps(line).decode())
                    seen += 1
                    if count is not None and seen >= count:
                        break
        except TimeoutError:
            pass
        except ClientFailed as exc:
            out(orjson.dumps({"error": str(exc), "status": exc.status}).decode())
            return 1
        finally:
            if closer is not None:
                closer.cancel()
        if not client.connected_once:
            last = client.last_error.message if client.last_error else "no answer"
            print(f"scorecast watch: never connected to {url} ({last})", file=sys.stderr)
            return 1
    return 0
