"""Decode client frames into typed messages; encode gateway frames once.

``decode_client`` raises a :class:`~protocol.errors.ClientError` whose ``code``
is the wire error code, carrying the request ``id`` when the request had one.
``text_frame`` turns an encoded payload into the bytes of an unmasked server
WebSocket text frame, so one event is serialised once for all subscribers;
``frame_header`` is the frame head it and the load tools' client frames share,
``accept_value`` the handshake's answer to a key, for both ends.
"""

from __future__ import annotations

import base64
import hashlib
import struct
from typing import Any

import msgspec

from scorecast.protocol.errors import (
    BadRequest,
    ClientError,
    InvalidTopic,
    TooManyTopics,
    UnknownType,
)
from scorecast.protocol.messages import (
    CLIENT_MESSAGES,
    ClientMessage,
    Error,
    Subscribe,
    Unsubscribe,
    is_request_id,
)
from scorecast.protocol.topics import is_valid_topic

__all__ = ["accept_value", "decode_client", "encode", "error_payload", "frame_header", "text_frame"]


class _Header(msgspec.Struct):
    type: Any = None
    id: Any = None


_header_decoder = msgspec.json.Decoder(_Header)
_decoders = {name: msgspec.json.Decoder(cls) for name, cls in CLIENT_MESSAGES.items()}
_encoder = msgspec.json.Encoder()


def decode_client(data: str | bytes, max_topics_per_request: int | None = None) -> ClientMessage:
    """One client text frame to a message, or a ClientError with its wire code."""
    try:
        header = _header_decoder.decode(data)
    except msgspec.ValidationError:  # a subclass of DecodeError: test it first
        raise BadRequest("a message must be a JSON object") from None
    except msgspec.DecodeError:
        raise BadRequest("not valid JSON") from None
    request_id = header.id if type(header.id) is int and is_request_id(header.id) else None
    if not isinstance(header.type, str):
        raise BadRequest("missing or non-string 'type'", request_id)
    decoder = _decoders.get(header.type)
    if decoder is None:
        raise UnknownType(f"unknown type {header.type[:40]!r}", request_id)
    try:
        message = decoder.decode(data)
    except msgspec.MsgspecError as exc:
        raise BadRequest(str(exc), request_id) from None
    if isinstance(message, Subscribe | Unsubscribe):
        message.topics = _checked_topics(message.topics, message.id, max_topics_per_request)
    return message


def _checked_topics(topics: list[str], request_id: int, limit: int | None) -> list[str]:
    if not topics:
        raise BadRequest("'topics' must not be empty", request_id)
    unique = list(dict.fromkeys(topics))
    for topic in unique:
        if not is_valid_topic(topic):
            raise InvalidTopic(f"invalid topic {topic[:60]!r}", request_id)
    if limit is not None and len(unique) > limit:
        raise TooManyTopics(f"at most {limit} topics per request", request_id)
    return unique


def encode(message: msgspec.Struct) -> bytes:
    return _encoder.encode(message)


def error_payload(error: ClientError) -> bytes:
    return _encoder.encode(Error(id=error.request_id, code=error.code, message=error.message))


_TEXT = 0x81  # FIN + opcode 1
_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def accept_value(key: bytes) -> bytes:
    """``Sec-WebSocket-Accept`` for a ``Sec-WebSocket-Key`` (RFC 6455 section
    4.2.2): base64 of SHA-1 of the key and the GUID."""
    return base64.b64encode(hashlib.sha1(key + _GUID).digest())


def frame_header(first: int, size: int, mask_bit: int = 0) -> bytes:
    """The head of one WebSocket frame (RFC 6455 5.2) up to the masking key:
    ``first`` is FIN, RSV and opcode; ``mask_bit`` is 0x80 for a masked
    (client) frame. The one framing rule of the project: the gateway's text
    frames and the load tools' client frames (``loadtest.frames``) use it."""
    if size < 126:
        return bytes((first, mask_bit | size))
    if size < 65536:
        return struct.pack("!BBH", first, mask_bit | 126, size)
    return struct.pack("!BBQ", first, mask_bit | 127, size)


def text_frame(payload: bytes) -> bytes:
    """An unmasked, unfragmented server-to-client text frame (RFC 6455 5.2)."""
    return frame_header(_TEXT, len(payload)) + payload
