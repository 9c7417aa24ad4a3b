"""One client WebSocket: read frames, decode them, call the node.

Writes bypass ``websockets``' per-message send path: the node hands over
bytes of whole, unmasked server frames (encoded once per event for every
subscriber) and they go straight to the transport, while ``websockets`` keeps
owning the handshake, pings and the closing handshake. Nothing is written once
the connection has left the OPEN state.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from typing import TYPE_CHECKING

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed
from websockets.protocol import State

from gateway.admission import Strikes, TokenBucket
from gateway.auth import OPEN, Grant
from gateway.outbox import Outbox
from protocol import PROTOCOL_VERSION
from protocol.codec import decode_client, encode, text_frame
from protocol.errors import ClientError, CloseCode, RateLimited
from protocol.messages import Auth, Ping, Pong, Subscribe, Unsubscribe, Welcome

if TYPE_CHECKING:
    from gateway.node import Node

__all__ = ["Client", "serve_client"]

ABUSE_WINDOW = 60.0
RATE_WINDOW = 10.0


class Client:
    """A connected client as the node sees it. Hashable by identity."""

    __slots__ = (
        "bucket",
        "closed",
        "expiry",
        "grant",
        "limited",
        "malformed",
        "outbox",
        "session",
        "transport",
        "waiting",
        "ws",
    )

    def __init__(self, ws: ServerConnection, node: Node) -> None:
        settings = node.settings
        self.ws = ws
        self.transport = ws.transport
        self.outbox = Outbox()
        self.session = secrets.token_hex(8)
        # topics subscribed but not yet started: topic -> since (None: snapshot)
        self.waiting: dict[str, int | None] = {}
        self.grant: Grant = getattr(ws, "grant", OPEN)
        self.expiry: asyncio.TimerHandle | None = None
        now = time.monotonic()
        self.bucket = TokenBucket(settings.messages_per_second, settings.message_burst, now)
        self.malformed = Strikes(settings.max_malformed_per_minute, ABUSE_WINDOW)
        self.limited = Strikes(settings.message_burst, RATE_WINDOW)
        self.closed = False

    def write(self, data: bytes) -> None:
        if self.ws.protocol.state is State.OPEN:
            self.transport.write(data)

    def unsent(self) -> int:
        return self.transport.get_write_buffer_size()

    def close(self, code: int, reason: str) -> None:
        """Close with ``code`` once what is owed (an error, a hint) went out."""
        if not self.closed:
            owed = self.outbox.take()
            if owed:
                self.write(owed)
            self.closed = True
            asyncio.get_running_loop().create_task(self.ws.close(code, reason))


async def serve_client(node: Node, ws: ServerConnection) -> None:
    client = Client(ws, node)
    settings = node.settings
    node.connect(client)
    welcome = Welcome(
        protocol=PROTOCOL_VERSION,
        session=client.session,
        node=settings.node,
        heartbeat=settings.heartbeat,
    )
    node.send(client, text_frame(encode(welcome)))
    try:
        async for data in ws:
            if client.closed:
                continue  # keep reading: the peer's close frame is behind these
            if isinstance(data, bytes):
                node.stats.abuse_closes += 1
                client.close(CloseCode.PROTOCOL_ABUSE, "binary frames are not accepted")
            else:
                _receive(node, client, data)
    except ConnectionClosed:
        pass
    finally:
        node.disconnect(client)
        client.closed = True


def _receive(node: Node, client: Client, data: str) -> None:
    now = time.monotonic()
    try:
        message = decode_client(data, node.settings.max_topics_per_request)
    except ClientError as error:
        node.send_error(client, error)
        if client.malformed.add(now):
            node.stats.abuse_closes += 1
            client.close(CloseCode.PROTOCOL_ABUSE, "repeated malformed messages")
        return
    if not client.bucket.take(now):
        node.stats.rate_limited += 1
        node.send_error(client, RateLimited("too many messages", message.id))
        if client.limited.add(now):
            client.close(CloseCode.RATE_LIMITED, "rate limit exceeded repeatedly")
        return
    try:
        if isinstance(message, Subscribe):
            node.subscribe(client, message)
        elif isinstance(message, Unsubscribe):
            node.unsubscribe(client, message)
        elif isinstance(message, Ping):
            node.send(client, text_frame(encode(Pong(id=message.id))))
        elif isinstance(message, Auth):
            node.authenticate(client, message)
    except ClientError as error:
        node.send_error(client, error)
