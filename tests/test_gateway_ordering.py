"""Property test of the per-topic ordering logic (sans-I/O, no event loop):
for any interleaving of live messages, duplicates, gaps, lost repairs and
reconnects, a subscriber's view obeys PROTOCOL.md section 4."""

from __future__ import annotations

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from scorecast.gateway.topic import Gap, Topic
from scorecast.protocol.envelope import decode_envelope, encode_envelope
from tests.support import check_sequence

N = 30


def env(seq: int):
    return decode_envelope(encode_envelope("t", seq, float(seq), "k", {"n": seq}, {"n": seq}))


def decode(frame: bytes) -> dict:
    offset = 2 if frame[1] < 126 else 4
    return orjson.loads(frame[offset:])


# what the gateway sees: (seq, how) where how says whether a repair of a gap
# this message reveals finds the missing events in JetStream
arrival = st.tuples(st.integers(1, N), st.booleans())


@settings(max_examples=400, deadline=None)
@given(start=st.integers(0, 5), arrivals=st.lists(arrival, max_size=60), late=st.booleans())
def test_subscriber_view_obeys_the_contract(start, arrivals, late):
    topic = Topic("t", history=8)
    view: list[dict] = []
    topic.reset(env(start) if start else None)
    view.append(decode(topic.snapshot_frame()))

    def deliver(frames):
        view.extend(decode(frame) for frame in frames)

    def handle(result, store_has_it: bool):
        while isinstance(result, Gap):
            found = [env(s) for s in range(result.first, result.last + 1)] if store_has_it else []
            frames, result, _ = topic.fill(result, found)
            deliver(frames)
        if isinstance(result, bytes):
            deliver([result])

    for seq, store_has_it in arrivals:
        handle(topic.offer(env(seq)), store_has_it)
    # a reconnect: the gateway re-syncs from the stream's newest message
    handle(topic.offer(env(N)), store_has_it=late)

    assert check_sequence(view) == N
    assert view[-1]["seq"] == N and topic.seq == N and not topic.held
    assert not topic.repairing
    seqs = [m["seq"] for m in view if m["type"] == "event"]
    assert len(seqs) == len(set(seqs)), "a duplicate event"
