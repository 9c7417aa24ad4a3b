"""The Python client over Server-Sent Events (``GET /sse``), for networks
that block WebSocket upgrades::

    async with SseClient("ws://127.0.0.1:8080/ws", topics=["match.4711"]) as client:
        async for update in client.updates():
            ...

The same :class:`~scorecast.client.ScorecastClient` (views, retries,
``Retry-After``, drain hints, occupancy), with the socket swapped: each
stream's URL carries every topic and its position (``since``), so a
reconnect resumes exactly. Its own views hold every position, so it sends
``since`` rather than ``Last-Event-ID`` (which is for browsers; the last
one seen is kept in ``last_event_id``). SSE is one-way: a subscribe or a
gap's resubscribe starts a new stream from the positions held; there are no
application pings (the gateway's heartbeat comments keep the stream alive)
and no ``auth`` refresh: a new token takes a new stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

import aiohttp
import orjson
from websockets.datastructures import Headers
from websockets.exceptions import InvalidStatus
from websockets.http11 import Response

from scorecast.client import ClientFailed, ScorecastClient, Status
from scorecast.client.connection import Socket
from scorecast.client.state import (
    Authed,
    GatewayError,
    ReconnectHint,
    Send,
    Update,
    Welcomed,
)

__all__ = ["SseClient", "sse_url"]


def sse_url(url: str) -> str:
    """The SSE endpoint beside a WebSocket URL: ws -> http, /ws -> /sse."""
    parts = urlsplit(url)
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme)
    path = parts.path.removesuffix("/ws").removesuffix("/sse") + "/sse"
    return urlunsplit((scheme, parts.netloc, path, "", ""))


class _Restart(Exception):
    """The topics changed, or a gap needs a resubscribe: a new stream now."""


class _Stream:
    """One open ``/sse`` response, closable like the WebSocket it replaces."""

    def __init__(self, session: aiohttp.ClientSession, response: aiohttp.ClientResponse) -> None:
        self.session, self.response = session, response

    async def close(self, code: int = 1000, reason: str = "") -> None:
        self.response.close()
        await self.session.close()

    async def send(self, text: str) -> None:
        raise _Restart()  # one-way: subscribing again means a new stream


class SseClient(ScorecastClient):
    def __init__(self, url: str, **options: Any) -> None:
        parts = urlsplit(url)
        if parts.scheme in ("http", "https"):  # the /sse URL itself: the base wants ws
            ws = {"http": "ws", "https": "wss"}[parts.scheme]
            url = urlunsplit((ws, parts.netloc, parts.path.removesuffix("/sse") + "/ws", "", ""))
        super().__init__(url, **options)
        self.sse_url = sse_url(self.url)
        self.last_event_id: str | None = None
        self.retry_ms = 1000

    async def subscribe(self, *topics: str) -> None:
        self.state.subscribe(topics)
        await self._restart()

    async def unsubscribe(self, *topics: str) -> None:
        self.state.unsubscribe(topics)
        await self._restart()

    async def refresh_token(self, token: str, timeout: float = 10.0) -> int:
        raise ConnectionError("SSE streams cannot be given a token: set client.token")

    async def _restart(self) -> None:
        stream = self._ws
        if stream is not None:
            await stream.close()

    async def _connect(self) -> _Stream:
        token = self.token() if callable(self.token) else self.token
        if inspect.isawaitable(token):
            token = await token
        query = {"topics": ",".join(self.state.topics)}
        cursor = ",".join(
            f"{view.topic}:{view.seq}" for view in self.state.views.values() if view.seq is not None
        )
        if cursor:
            query["since"] = cursor
        if self.occupancy:
            query["occupancy"] = "1"
        headers = {"Accept": "text/event-stream"}
        if token and self.token_in_query:
            query["token"] = token
        elif token:
            headers["Authorization"] = f"Bearer {token}"
        timeout = aiohttp.ClientTimeout(total=None, connect=self.open_timeout, sock_read=None)
        session = aiohttp.ClientSession(timeout=timeout)
        try:
            response = await session.get(f"{self.sse_url}?{urlencode(query)}", headers=headers)
        except aiohttp.InvalidURL as exc:
            await session.close()
            raise ClientFailed(f"cannot use {exc}") from None
        except (aiohttp.ClientError, TimeoutError) as exc:
            await session.close()
            raise OSError(str(exc)) from None
        if response.status != 200:
            body = await response.read()
            refusal = Headers(list(response.headers.items()))
            response.close()
            await session.close()
            raise InvalidStatus(Response(response.status, response.reason or "", refusal, body))
        return _Stream(session, response)

    async def _session(self, ws: Socket) -> tuple[float | None, bool]:
        """Serve one stream; (seconds a reconnect hint asks to wait, welcomed)."""
        assert isinstance(ws, _Stream)  # what _connect opened
        self._ws = ws
        hint_at: float | None = None
        welcomed = False
        loop = asyncio.get_running_loop()
        self.state.connection_lost()  # the URL subscribed everything: nothing in flight
        self.state.connected = True
        try:
            async for kind, ident, data in _events(ws.response):
                if kind == "retry":
                    self.retry_ms = int(data)
                    continue
                if ident is not None:
                    self.last_event_id = ident
                try:
                    message = orjson.loads(data)
                except orjson.JSONDecodeError:
                    self.state.counters.bad_frames += 1
                    continue
                if type(message) is dict and message.get("type") == "occupancy":
                    self._occupancy(message)
                    continue
                for output in self.state.receive(message):
                    if isinstance(output, Update):
                        self._deliver(output)
                    elif isinstance(output, Send):
                        raise _Restart()  # a gap: resume from the positions held
                    elif isinstance(output, Welcomed):
                        welcomed = self.connected_once = True
                        self._set_status(Status.CONNECTED)
                    elif isinstance(output, ReconnectHint):
                        hint_at = loop.time() + output.after_ms / 1000
                        self._set_status(Status.DRAINING)
                    elif isinstance(output, GatewayError):
                        self._report(output)
                    elif isinstance(output, Authed):
                        pass
        except _Restart:
            hint_at = loop.time()  # at once, not after a backoff
        except (aiohttp.ClientError, OSError, asyncio.IncompleteReadError):
            pass
        finally:
            self._ws = None
            self.state.connection_lost()
            with contextlib.suppress(Exception):
                await ws.close()
        return (None if hint_at is None else max(0.0, hint_at - loop.time())), welcomed


async def _events(
    response: aiohttp.ClientResponse,
) -> AsyncIterator[tuple[str, str | None, str]]:
    """(event, id, data) for each SSE message; ("retry", None, ms) for retry fields."""
    event, ident = "message", None
    data: list[str] = []
    async for raw in response.content:
        line = raw.decode().rstrip("\r\n")
        if not line:
            if data:
                yield event, ident, "\n".join(data)
            event, data, ident = "message", [], None
        elif line.startswith(":"):
            continue
        else:
            field, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if field == "event":
                event = value
            elif field == "data":
                data.append(value)
            elif field == "id":
                ident = value
            elif field == "retry" and value.isdigit():
                yield "retry", None, value
