"""Topic grammar (PROTOCOL.md section 1) and the topic <-> NATS subject map."""

from __future__ import annotations

import re
from typing import TypeGuard

from scorecast.protocol import SUBJECT_PREFIX

__all__ = ["MAX_TOPIC_LENGTH", "is_valid_topic", "subject_for", "topic_of"]

MAX_TOPIC_LENGTH = 200
_TOPIC = re.compile(r"[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+){0,7}")


def is_valid_topic(topic: object) -> TypeGuard[str]:
    """1 to 8 dot-separated tokens of ``[A-Za-z0-9_-]+``, at most 200 chars."""
    return (
        isinstance(topic, str)
        and len(topic) <= MAX_TOPIC_LENGTH
        and _TOPIC.fullmatch(topic) is not None
    )


def subject_for(topic: str) -> str:
    return SUBJECT_PREFIX + topic


def topic_of(subject: str) -> str:
    return subject[len(SUBJECT_PREFIX) :]
