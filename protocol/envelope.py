"""The event envelope stored in JetStream (PROTOCOL.md section 2).

Publishers build envelopes from plain dicts; gateways decode them with the
``data`` and ``state`` members kept as raw JSON, so that forwarding an event
never re-serialises the match state.
"""

from __future__ import annotations

from typing import Any

import msgspec
import orjson

from scorecast.protocol.topics import is_valid_topic

__all__ = ["Envelope", "InvalidEnvelope", "decode_envelope", "encode_envelope", "message_id"]


class Envelope(msgspec.Struct, frozen=True):
    topic: str
    seq: int
    ts: float
    kind: str
    data: msgspec.Raw
    state: msgspec.Raw


class InvalidEnvelope(ValueError):
    """A message on a ``scores.`` subject that is not an envelope."""


_decoder = msgspec.json.Decoder(Envelope)


def decode_envelope(body: bytes) -> Envelope:
    try:
        envelope = _decoder.decode(body)
    except msgspec.MsgspecError as exc:
        raise InvalidEnvelope(str(exc)) from None
    if envelope.seq < 1 or not is_valid_topic(envelope.topic):
        raise InvalidEnvelope(f"bad topic or seq: {envelope.topic!r} {envelope.seq}")
    return envelope


def encode_envelope(topic: str, seq: int, ts: float, kind: str, data: Any, state: Any) -> bytes:
    return orjson.dumps(
        {"topic": topic, "seq": seq, "ts": ts, "kind": kind, "data": data, "state": state}
    )


def message_id(topic: str, seq: int, feed_id: str | None = None) -> str:
    """``Nats-Msg-Id``: the feed's own event id when it gave one, else topic:seq."""
    return feed_id if feed_id else f"{topic}:{seq}"
