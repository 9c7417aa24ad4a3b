"""Envelopes for the load tools and the tests, and the storm's fixed-rate publisher.

:class:`Envelopes` is the one source of test envelopes (PROTOCOL.md section
2): per topic the next ``seq`` (or one given, to craft gaps and duplicates),
the state merge-patched from the last, ``ts`` the wall clock now, and the
``Nats-Msg-Id`` ``<topic>:<seq>``. The storm's :class:`FixedRatePublisher`,
the bench publisher, the faults suite's feed and the tests' raw publisher
all take their envelopes from it.

:class:`FixedRatePublisher`, for storms that need traffic: round-robin over
the given topics (in a fixed shuffled order), ``rate`` events per second in
total, ``seq`` per topic continuing from what the stream already holds. Creates the
``SCORES`` stream when it is missing (gateways never do), with the
publishers' own :func:`publishers.stream.ensure_stream`. Publishes due in
the same 10 ms tick go out together on the one NATS connection, which keeps
their order.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from typing import Any

import orjson
from nats.js.errors import NotFoundError

from scorecast.protocol import STREAM_NAME
from scorecast.protocol.envelope import encode_envelope, message_id
from scorecast.protocol.merge_patch import apply_patch
from scorecast.protocol.topics import subject_for
from scorecast.publishers.stream import ensure_stream

__all__ = ["Envelopes", "FixedRatePublisher"]

TICK = 0.01


class Envelopes:
    """The next envelope per topic: ``(subject, body, headers)``."""

    __slots__ = ("seqs", "states")

    def __init__(self) -> None:
        self.seqs: dict[str, int] = {}
        self.states: dict[str, Any] = {}

    def next(
        self, topic: str, patch: Any, kind: str = "update", *, seq: int | None = None,
        state: Any = None,
    ) -> tuple[str, bytes, dict[str, str]]:  # fmt: skip
        """The envelope after the last one of ``topic`` (or at ``seq``); its state is
        the last merge-patched with ``patch`` unless ``state`` is given."""
        seq = seq or self.seqs.get(topic, 0) + 1
        if state is None:
            state = apply_patch(self.states.get(topic), patch)
        self.seqs[topic], self.states[topic] = seq, state
        body = encode_envelope(topic, seq, time.time(), kind, patch, state)
        return subject_for(topic), body, {"Nats-Msg-Id": message_id(topic, seq)}


class FixedRatePublisher:
    def __init__(self, js, topics: list[str], rate: float, seed: int = 1) -> None:
        if rate <= 0:
            raise ValueError("the publish rate must be positive")
        self.js = js
        # a fixed shuffle: topics listed by popularity would otherwise make every
        # round start with a burst to the most-watched matches
        self.topics = list(topics)
        random.Random(seed).shuffle(self.topics)
        self.rate = rate
        self.envelopes = Envelopes()
        self.seqs = self.envelopes.seqs
        self.published = 0
        self.errors = 0

    async def prepare(self, history: int = 1000) -> None:
        """Create the stream if needed and read each topic's last seq."""
        await ensure_stream(self.js, history=history)
        for topic in self.topics:
            try:
                message = await self.js.get_last_msg(STREAM_NAME, subject_for(topic))
                self.seqs[topic] = int(orjson.loads(message.data)["seq"])
            except NotFoundError:
                self.seqs[topic] = 0

    async def run(
        self,
        seconds: float,
        on_second: Callable[[int, int], None] | None = None,
        stopped: Callable[[], bool] = lambda: False,
    ) -> None:
        """Publish for ``seconds`` (or until ``stopped()``); ``on_second(second, count)``
        after each second."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        turn = sent = reported = 0
        last_second = 0
        while (elapsed := loop.time() - start) < seconds and not stopped():
            due = int(elapsed * self.rate) - sent
            batch = []
            for _ in range(max(0, due)):
                topic = self.topics[turn % len(self.topics)]
                turn += 1
                batch.append(self._publish(topic))
            if batch:
                await asyncio.gather(*batch)
                sent += len(batch)
            second = int(loop.time() - start)
            if on_second is not None and second > last_second:
                on_second(last_second, self.published - reported)
                reported, last_second = self.published, second
            await asyncio.sleep(TICK)
        if on_second is not None:
            on_second(last_second, self.published - reported)

    async def _publish(self, topic: str) -> None:
        seq = self.seqs[topic] + 1
        subject, body, headers = self.envelopes.next(topic, {"n": seq}, "tick", state={"n": seq})
        for _attempt in range(2):  # a retry with the same id is stored once
            try:
                await self.js.publish(subject, body, headers=headers)
                self.published += 1
                return
            except Exception:
                self.errors += 1
        # still lost: the stream has a gap here, which gateways must answer
        # with a snapshot; the clients' counters show whether they did
