"""A Server-Sent Events client on a bare socket, for tests: it parses the
stream by the HTML standard's rules and records every message with its
``event``, ``id`` and decoded ``data``. It can stop reading (a slow client)."""

from __future__ import annotations

import asyncio
import contextlib
import socket

import orjson

from tests.support import first_match


class SseReader:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.status = 0
        self.headers: dict[str, str] = {}
        self.body = b""
        self.messages: list[dict] = []  # {"event", "id", "data"}
        self.comments = 0
        self.retry: int | None = None
        self.last_id: str | None = None
        self.ended = False
        self._task: asyncio.Task | None = None
        self._arrived = asyncio.Event()

    @classmethod
    async def open(
        cls,
        port: int,
        query: str,
        headers: dict[str, str] | None = None,
        *,
        path: str = "/sse",
        receive_buffer: int | None = None,
        read: bool = True,
    ) -> SseReader:
        sock = socket.socket()
        if receive_buffer is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
        reader, writer = await asyncio.open_connection(sock=sock, limit=2**16)
        lines = [
            f"GET {path}{query} HTTP/1.1",
            f"Host: 127.0.0.1:{port}",
            "Accept: text/event-stream",
        ]
        lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        client = cls(reader, writer)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        status_line, *header_lines = head.decode().split("\r\n")
        client.status = int(status_line.split()[1])
        for line in header_lines:
            if ":" in line:
                name, _, value = line.partition(":")
                client.headers[name.strip().lower()] = value.strip()
        if client.status != 200:
            size = int(client.headers.get("content-length", "0"))
            client.body = await reader.readexactly(size) if size else b""
            writer.close()
            client.ended = True
        elif read:
            client.start_reading()
        return client

    def start_reading(self) -> None:
        self._task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        event, data, ident = "message", [], None
        try:
            while True:
                raw = await self.reader.readline()
                if not raw:
                    break
                line = raw.rstrip(b"\r\n").decode()
                if not line:
                    if data:
                        if ident is not None:
                            self.last_id = ident
                        self.messages.append(
                            {"event": event, "id": ident, "data": orjson.loads("\n".join(data))}
                        )
                        self._arrived.set()
                    event, data, ident = "message", [], None
                    continue
                if line.startswith(":"):
                    self.comments += 1
                    continue
                field, _, value = line.partition(":")
                value = value.removeprefix(" ")
                if field == "event":
                    event = value
                elif field == "data":
                    data.append(value)
                elif field == "id":
                    ident = value
                elif field == "retry":
                    self.retry = int(value)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self.ended = True
            self._arrived.set()

    @property
    def frames(self) -> list[dict]:
        return [message["data"] for message in self.messages]

    def of(self, topic: str) -> list[dict]:
        return [frame for frame in self.frames if frame.get("topic") == topic]

    async def wait_for(self, predicate, timeout: float = 15.0) -> dict:
        """The first message whose data matches ``predicate``."""
        message = await first_match(
            self.messages, lambda m: predicate(m["data"]), self._arrived, lambda: self.ended,
            timeout, wake=1.0,
        )  # fmt: skip
        return message["data"]

    async def wait_end(self, timeout: float = 30.0) -> None:
        async with asyncio.timeout(timeout):
            while not self.ended:
                self._arrived.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._arrived.wait(), 1.0)

    async def close(self) -> None:
        self.writer.close()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
