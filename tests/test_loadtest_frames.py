"""The load generator's sans-I/O WebSocket client core, checked against
``websockets``' own server-side protocol so both ends agree on the bytes."""

from __future__ import annotations

import pytest
from websockets.frames import Frame, Opcode
from websockets.http11 import Request
from websockets.server import ServerProtocol

from scorecast.loadtest.frames import (
    CLOSE,
    PING,
    TEXT,
    FrameError,
    FrameReader,
    Handshake,
    HandshakeError,
    client_frame,
    close_payload,
    parse_close,
)
from scorecast.protocol.codec import text_frame


def server_for(handshake: Handshake) -> tuple[ServerProtocol, bytes]:
    """A websockets server that accepted ``handshake``; its 101 bytes."""
    server = ServerProtocol()
    server.receive_data(handshake.request)
    (request,) = server.events_received()
    assert isinstance(request, Request)
    server.send_response(server.accept(request))
    return server, server.data_to_send()[0]


def test_handshake_accepted_by_websockets_and_answer_checked():
    handshake = Handshake("127.0.0.1:9", "/ws?token=x")
    _, response = server_for(handshake)
    assert handshake.receive(response[:10]) is None  # the head is not complete yet
    first = text_frame(b'{"type":"welcome"}')
    assert handshake.receive(response[10:] + first) == first


def test_handshake_refusal_and_bad_accept():
    with pytest.raises(HandshakeError) as refused:
        Handshake("h").receive(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n")
    assert refused.value.status == 503
    other = Handshake("h")
    _, response = server_for(Handshake("h"))  # accepted for another key
    with pytest.raises(HandshakeError, match="Sec-WebSocket-Accept"):
        other.receive(response)
    with pytest.raises(HandshakeError, match="bad status line"):
        Handshake("h").receive(b"garbage\r\n\r\n")


def test_client_frames_are_masked_and_readable_by_a_server():
    handshake = Handshake("h")
    server, _ = server_for(handshake)
    payload = b'{"type":"subscribe","id":1,"topics":["match.1"]}' * 5  # > 125: 16-bit length
    server.receive_data(client_frame(TEXT, payload) + client_frame(CLOSE, close_payload(1000)))
    text, close = server.events_received()
    assert text.opcode is Opcode.TEXT and text.data == payload
    assert close.opcode is Opcode.CLOSE


def test_reader_splits_joins_and_handles_control_frames():
    reader = FrameReader()
    data = (
        text_frame(b"one")
        + Frame(Opcode.TEXT, b"tw", fin=False).serialize(mask=False)
        + Frame(Opcode.PING, b"hb").serialize(mask=False)
        + Frame(Opcode.CONT, b"o").serialize(mask=False)
        + text_frame(b"x" * 70000)  # 64-bit length
    )
    messages = []
    for start in range(0, len(data), 7):  # arrives in small pieces
        messages += reader.feed(data[start : start + 7])
    assert messages == [(TEXT, b"one"), (PING, b"hb"), (TEXT, b"two"), (TEXT, b"x" * 70000)]


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        (Frame(Opcode.TEXT, b"m").serialize(mask=True), "masked"),
        (Frame(Opcode.CONT, b"m").serialize(mask=False), "continuation without"),
        (bytes([0x09, 1]) + b"p", "control frame"),  # a ping without FIN
        (bytes([0xC1, 1]) + b"x", "reserved bits"),
    ],
)
def test_reader_refuses_broken_frames(frame, message):
    with pytest.raises(FrameError, match=message):
        FrameReader().feed(frame)


def test_reader_size_limit_and_close_payload():
    with pytest.raises(FrameError, match="over the 10 limit"):
        FrameReader(max_size=10).feed(text_frame(b"y" * 11))
    assert parse_close(close_payload(4008, "slow")) == (4008, "slow")
    assert parse_close(b"") == (1005, "")


def test_reader_reads_what_a_websockets_server_sends():
    server, _ = server_for(Handshake("h"))
    server.send_text(b"abc")
    server.send_ping(b"hb")
    server.send_text(b"z" * 300)
    data = b"".join(server.data_to_send())
    assert FrameReader().feed(data) == [(TEXT, b"abc"), (PING, b"hb"), (TEXT, b"z" * 300)]
