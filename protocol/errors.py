"""Errors of the wire contract, split by who is at fault.

::

    ScorecastError
    ├── ClientError            the peer sent something the contract refuses
    │   ├── BadRequest         bad_request
    │   ├── UnknownType        unknown_type
    │   ├── InvalidTopic       invalid_topic
    │   ├── Forbidden          forbidden
    │   ├── TooManyTopics      too_many_topics
    │   ├── RateLimited        rate_limited
    │   └── Unauthorized       unauthorized
    └── ServerError            our side failed (never the client's fault)

Each ``ClientError`` carries the wire ``code`` of PROTOCOL.md section 5 and the
``request_id`` of the request it answers (``None`` when not tied to one).
"""

from __future__ import annotations

__all__ = [
    "BadRequest",
    "ClientError",
    "CloseCode",
    "Forbidden",
    "InvalidTopic",
    "RateLimited",
    "ScorecastError",
    "ServerError",
    "TooManyTopics",
    "Unauthorized",
    "UnknownType",
]


class ScorecastError(Exception):
    """Root of every error scorecast raises on purpose."""


class ServerError(ScorecastError):
    """Something failed on our side."""


class ClientError(ScorecastError):
    """The peer broke the contract; answered with an ``error`` frame."""

    code = "bad_request"

    def __init__(self, message: str, request_id: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.request_id = request_id


class BadRequest(ClientError):
    code = "bad_request"


class UnknownType(ClientError):
    code = "unknown_type"


class InvalidTopic(ClientError):
    code = "invalid_topic"


class Forbidden(ClientError):
    code = "forbidden"


class TooManyTopics(ClientError):
    code = "too_many_topics"


class RateLimited(ClientError):
    code = "rate_limited"


class Unauthorized(ClientError):
    code = "unauthorized"


class CloseCode:
    """WebSocket close codes of PROTOCOL.md section 5, in one table."""

    NORMAL = 1000
    GOING_AWAY = 1001
    POLICY = 1008
    TOO_BIG = 1009
    INTERNAL_ERROR = 1011
    RESTART = 1012
    PROTOCOL_ABUSE = 4000
    TOKEN_EXPIRED = 4001
    SLOW_CONSUMER = 4008
    RATE_LIMITED = 4029
