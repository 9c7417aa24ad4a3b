"""The codec against every error code that bad input can produce."""

from __future__ import annotations

import msgspec
import orjson
import pytest

from scorecast.protocol.codec import decode_client, encode, error_payload, text_frame
from scorecast.protocol.envelope import InvalidEnvelope, decode_envelope, encode_envelope
from scorecast.protocol.errors import ClientError
from scorecast.protocol.merge_patch import apply_patch, diff
from scorecast.protocol.messages import NULL, Ping, Snapshot, Subscribe, Unsubscribe
from scorecast.protocol.topics import is_valid_topic, subject_for, topic_of


def error_of(data, limit=None) -> tuple[str, int | None]:
    with pytest.raises(ClientError) as caught:
        decode_client(data, limit)
    return caught.value.code, caught.value.request_id


@pytest.mark.parametrize(
    ("data", "code", "request_id"),
    [
        ("not json", "bad_request", None),
        ("[1, 2]", "bad_request", None),
        ('"text"', "bad_request", None),
        ("{}", "bad_request", None),
        ('{"type": 5, "id": 1}', "bad_request", 1),
        ('{"type": "dance", "id": 4}', "unknown_type", 4),
        ('{"type": "dance"}', "unknown_type", None),
        ('{"type": "ping"}', "bad_request", None),
        ('{"type": "ping", "id": "7"}', "bad_request", None),
        ('{"type": "ping", "id": 1.5}', "bad_request", None),
        ('{"type": "ping", "id": true}', "bad_request", None),
        ('{"type": "ping", "id": 99999999999999999999999}', "bad_request", None),
        ('{"type": "subscribe", "id": 2, "topics": []}', "bad_request", 2),
        ('{"type": "subscribe", "id": 2, "topics": "match.1"}', "bad_request", 2),
        ('{"type": "subscribe", "id": 2, "topics": [1]}', "bad_request", 2),
        ('{"type": "subscribe", "id": 2, "topics": ["a..b"]}', "invalid_topic", 2),
        ('{"type": "subscribe", "id": 2, "topics": ["match.*"]}', "invalid_topic", 2),
        ('{"type": "subscribe", "id": 2, "topics": ["ok", "x y"]}', "invalid_topic", 2),
        ('{"type": "subscribe", "id": 3, "topics": ["a"], "since": {"a": -1}}', "bad_request", 3),
        ('{"type": "subscribe", "id": 3, "topics": ["a"], "since": {"a": "1"}}', "bad_request", 3),
        ('{"type": "subscribe", "id": 3, "topics": ["a"], "since": [1]}', "bad_request", 3),
        ('{"type": "unsubscribe", "id": 5, "topics": []}', "bad_request", 5),
        ('{"type": "auth", "id": 6}', "bad_request", 6),
        ("[" * 10000 + "]" * 10000, "bad_request", None),
    ],
)
def test_bad_input_maps_to_contract_codes(data, code, request_id):
    assert error_of(data) == (code, request_id)


def test_too_many_topics_is_checked_after_duplicates_are_removed():
    request = orjson.dumps({"type": "subscribe", "id": 9, "topics": ["a", "b", "c", "a"]})
    assert decode_client(request, 3).topics == ["a", "b", "c"]
    request = orjson.dumps({"type": "subscribe", "id": 9, "topics": ["a", "b", "c", "d"]})
    assert error_of(request, 3) == ("too_many_topics", 9)


def test_valid_messages_and_unknown_fields_are_ignored():
    message = decode_client(
        '{"type":"subscribe","id":1,"topics":["match.1","match.1"],"since":{"match.1":4},"x":1}'
    )
    assert message == Subscribe(id=1, topics=["match.1"], since={"match.1": 4})
    assert decode_client(b'{"id": 3, "type": "ping"}') == Ping(id=3)
    assert decode_client('{"type":"unsubscribe","id":2,"topics":["a"]}') == Unsubscribe(2, ["a"])


def test_gateway_messages_encode_with_type_first():
    snapshot = orjson.loads(encode(Snapshot(topic="t", seq=0, ts=None, state=NULL)))
    assert snapshot == {"type": "snapshot", "topic": "t", "seq": 0, "ts": None, "state": None}
    error = ClientError("nope", 4)
    assert orjson.loads(error_payload(error)) == {
        "type": "error",
        "id": 4,
        "code": "bad_request",
        "message": "nope",
    }


@pytest.mark.parametrize("size", [0, 125, 126, 65535, 65536, 70000])
def test_text_frame_header_lengths(size):
    payload = b"x" * size
    frame = text_frame(payload)
    assert frame[0] == 0x81 and frame.endswith(payload)
    if size < 126:
        assert frame[1] == size
    elif size < 65536:
        assert frame[1] == 126 and int.from_bytes(frame[2:4]) == size
    else:
        assert frame[1] == 127 and int.from_bytes(frame[2:10]) == size


@pytest.mark.parametrize(
    ("topic", "valid"),
    [
        ("match.4711", True),
        ("football.live", True),
        ("a-b_c.D9", True),
        (".".join(["t"] * 8), True),
        (".".join(["t"] * 9), False),
        ("x" * 200, True),
        ("x" * 201, False),
        ("", False),
        ("a.", False),
        ("a b", False),
        ("match.>", False),
        (5, False),
    ],
)
def test_topic_grammar(topic, valid):
    assert is_valid_topic(topic) is valid


def test_subject_mapping():
    assert subject_for("match.4711") == "scores.match.4711"
    assert topic_of("scores.match.4711") == "match.4711"


def test_envelope_round_trip_keeps_raw_state():
    body = encode_envelope("match.1", 3, 1.5, "goal", {"s": 1}, {"s": 1, "t": 2})
    envelope = decode_envelope(body)
    assert (envelope.topic, envelope.seq, envelope.kind) == ("match.1", 3, "goal")
    assert orjson.loads(bytes(envelope.state)) == {"s": 1, "t": 2}
    for bad in (b"{}", b"[]", encode_envelope("bad topic", 1, 0, "k", {}, {})):
        with pytest.raises(InvalidEnvelope):
            decode_envelope(bad)
    with pytest.raises(InvalidEnvelope):
        decode_envelope(encode_envelope("t", 0, 0, "k", {}, {}))
    assert isinstance(envelope.data, msgspec.Raw)


def test_merge_patch_rfc7386_examples():
    assert apply_patch({"a": "b"}, {"a": "c"}) == {"a": "c"}
    assert apply_patch({"a": "b"}, {"b": "c"}) == {"a": "b", "b": "c"}
    assert apply_patch({"a": "b"}, {"a": None}) == {}
    assert apply_patch({"a": {"b": "c"}}, {"a": {"b": "d", "c": None}}) == {"a": {"b": "d"}}
    assert apply_patch({"a": [1]}, {"a": [2]}) == {"a": [2]}
    assert apply_patch(["a"], {"a": "b"}) == {"a": "b"}
    assert apply_patch({"a": "b"}, ["c"]) == ["c"]
    assert apply_patch(None, {"a": 1}) == {"a": 1}
    before = {"a": 1, "b": {"c": 2, "d": 3}, "e": 4}
    after = {"a": 1, "b": {"c": 5}, "f": 6}
    assert apply_patch(before, diff(before, after)) == after
