"""The scorecast wire contract (``shared/PROTOCOL.md``, version 1) as code.

Pure data and pure functions: no I/O, no asyncio, no NATS, no websockets.

- :mod:`protocol.topics`      topic grammar, topic <-> NATS subject
- :mod:`protocol.messages`    client and gateway messages as msgspec Structs
- :mod:`protocol.envelope`    the event envelope stored in JetStream
- :mod:`protocol.codec`       decode client frames, encode gateway frames once
- :mod:`protocol.errors`      the error tree and its wire codes
- :mod:`protocol.merge_patch` RFC 7386 JSON Merge Patch
- :mod:`protocol.sequence`    the delivery guarantee: what an event's seq is
"""

PROTOCOL_VERSION = 1
STREAM_NAME = "SCORES"
SUBJECT_PREFIX = "scores."
# JetStream republishes every message it stored to COMMITTED_PREFIX + topic.
# Gateways follow those subjects, so a publish JetStream refused (a lost race
# on expected-last-subject-sequence, a duplicate) never reaches a client.
COMMITTED_PREFIX = "committed.scores."

__all__ = ["COMMITTED_PREFIX", "PROTOCOL_VERSION", "STREAM_NAME", "SUBJECT_PREFIX"]
