"""Client and gateway messages (PROTOCOL.md section 3) as msgspec Structs.

Every message is a JSON object whose ``type`` field is the Struct's tag.
Unknown fields are ignored on decode, so either side can grow.
"""

from __future__ import annotations

from typing import Annotated

import msgspec

__all__ = [
    "CLIENT_MESSAGES",
    "Auth",
    "Authed",
    "ClientMessage",
    "Error",
    "Event",
    "Occupancy",
    "Ping",
    "Pong",
    "Reconnect",
    "Snapshot",
    "Subscribe",
    "Subscribed",
    "Unsubscribe",
    "Unsubscribed",
    "Welcome",
    "is_request_id",
]

Position = Annotated[int, msgspec.Meta(ge=0)]
# Request ids are echoed back; keep them to what every JSON peer reads exactly.
_ID_LIMIT = 2**53
RequestId = Annotated[int, msgspec.Meta(ge=-_ID_LIMIT, le=_ID_LIMIT)]


def is_request_id(value: int) -> bool:
    return -_ID_LIMIT <= value <= _ID_LIMIT


NULL = msgspec.Raw(b"null")


class _Message(msgspec.Struct, tag_field="type", omit_defaults=False):
    pass


# --- client to gateway -------------------------------------------------------


class Subscribe(_Message, tag="subscribe"):
    id: RequestId
    topics: list[str]
    since: dict[str, Position] | None = None
    # ask for ``occupancy`` frames of these topics (PROTOCOL.md section 3)
    occupancy: bool = False


class Unsubscribe(_Message, tag="unsubscribe"):
    id: RequestId
    topics: list[str]


class Ping(_Message, tag="ping"):
    id: RequestId


class Auth(_Message, tag="auth"):
    id: RequestId
    token: str


ClientMessage = Subscribe | Unsubscribe | Ping | Auth
CLIENT_MESSAGES: dict[str, type[ClientMessage]] = {
    "subscribe": Subscribe,
    "unsubscribe": Unsubscribe,
    "ping": Ping,
    "auth": Auth,
}


# --- gateway to client -------------------------------------------------------


class Welcome(_Message, tag="welcome"):
    protocol: int
    session: str
    node: str
    heartbeat: float


class Subscribed(_Message, tag="subscribed"):
    id: int
    topics: list[str]


class Unsubscribed(_Message, tag="unsubscribed"):
    id: int
    topics: list[str]


class Snapshot(_Message, tag="snapshot"):
    """``seq`` 0, ``ts`` None and ``state`` null for a topic without data."""

    topic: str
    seq: int
    ts: float | None
    state: msgspec.Raw


class Event(_Message, tag="event"):
    topic: str
    seq: int
    ts: float
    kind: str
    data: msgspec.Raw


class Pong(_Message, tag="pong"):
    id: int


class Authed(_Message, tag="authed"):
    id: int
    exp: int


class Error(_Message, tag="error"):
    id: int | None
    code: str
    message: str


class Reconnect(_Message, tag="reconnect"):
    after_ms: int
    reason: str


class Occupancy(_Message, tag="occupancy"):
    """A gauge, not an event: subscriptions to ``topic`` on every gateway of
    the same NATS, at ``ts`` (gateway wall clock). No ``seq``."""

    topic: str
    subscribers: int
    ts: float
