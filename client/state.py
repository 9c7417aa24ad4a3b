"""The client's view of its topics, sans-I/O: frames in, things to do out.

:class:`ClientState` is fed with gateway frames already decoded from JSON
(``receive``) and with connection events (``connection_made``,
``connection_lost``). It never touches a socket or a clock of its own: it
answers with records saying what happened and what to send.

- :class:`Update`          a topic's state changed (snapshot or event applied)
- :class:`Send`            send this frame to the gateway (a resubscribe after
                           a gap, say)
- :class:`Welcomed`        the gateway greeted this connection
- :class:`ReconnectHint`   the gateway is draining: reconnect after ``after_ms``
- :class:`GatewayError`    an ``error`` frame, with the topics it refused

Delivery rules (PROTOCOL.md section 4, :func:`scorecast.protocol.sequence.arrival`)
as the client enforces them, per topic:

- a ``snapshot`` replaces the state and sets the position to its ``seq``,
  even when that is lower (the stream was reset);
- an ``event`` with ``seq`` = position + 1 is applied as an RFC 7386 merge
  patch; any other ``seq`` (a gap, a duplicate, a step backwards) is dropped
  and the topic is resubscribed with ``since`` = position, so the gateway
  replays what is missing or sends a snapshot. The resubscribe is not sent
  at once: gapped topics are queued and :meth:`ClientState.flush` sends them
  all as one ``subscribe`` (the I/O layer calls it a moment after the first
  gap), so 41 gaps at once are one request, not 41 against the gateway's
  message rate limit;
- a ``rate_limited`` answer to a subscribe drops nothing: the gateway still
  streams what it held, so the request's topics go back to the queue and the
  I/O layer flushes it again after a delay;
- frames of a topic between a (re)subscribe request and its ``subscribed``
  answer belong to the previous subscription and are dropped: the gateway
  restarts the topic after answering, so nothing is lost.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from scorecast.protocol.merge_patch import apply_patch
from scorecast.protocol.sequence import Arrival, arrival
from scorecast.protocol.topics import is_valid_topic

__all__ = [
    "Authed",
    "ClientState",
    "Counters",
    "GatewayError",
    "Output",
    "ReconnectHint",
    "Send",
    "TopicView",
    "Update",
    "Welcomed",
]

# The gateway refuses a subscribe naming more topics than this whole
# (GatewaySettings.max_topics_per_request), so resubscribes are split.
DEFAULT_MAX_TOPICS_PER_REQUEST = 100


@dataclass(frozen=True, slots=True)
class Update:
    """A topic's new full ``state`` after a snapshot or an event.

    ``kind`` is the event's kind, or ``"snapshot"`` when ``snapshot`` is true;
    ``data`` is the merge patch an event applied (None for a snapshot). The
    state is shared with the client's view: treat it as read-only.
    """

    topic: str
    seq: int
    kind: str
    state: Any
    data: Any = None
    ts: float | None = None
    snapshot: bool = False


@dataclass(frozen=True, slots=True)
class Send:
    message: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Welcomed:
    session: str
    node: str
    heartbeat: float | None
    protocol: int | None


@dataclass(frozen=True, slots=True)
class ReconnectHint:
    after_ms: int
    reason: str


@dataclass(frozen=True, slots=True)
class GatewayError:
    """An ``error`` frame; ``topics`` lists the topics it refused, if any."""

    code: str
    message: str
    request_id: int | None
    topics: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Authed:
    """The gateway took a refreshed token: valid until ``exp``."""

    request_id: int
    exp: int


Output = Update | Send | Welcomed | ReconnectHint | GatewayError | Authed


@dataclass(slots=True)
class TopicView:
    """One topic as the client knows it.

    ``seq`` is None until the first snapshot; ``pending`` is the id of the
    subscribe request not yet answered (frames are dropped meanwhile).
    """

    topic: str
    seq: int | None = None
    state: Any = None
    ts: float | None = None
    pending: int | None = None

    @property
    def since(self) -> int | None:
        """The position to resume from after a reconnect, or None."""
        return self.seq


@dataclass(slots=True)
class _Request:
    kind: str
    topics: tuple[str, ...]
    refusals: list[str] = field(default_factory=list)


@dataclass(slots=True)
class Counters:
    """What the state machine has seen; exported by the clients for debugging."""

    snapshots: int = 0
    events: int = 0
    gaps: int = 0
    duplicates: int = 0
    resubscribes: int = 0
    dropped_in_flight: int = 0
    bad_frames: int = 0


class ClientState:
    """Topics wanted, their views, and the requests in flight."""

    def __init__(
        self, topics: Iterable[str] = (), *, max_topics_per_request: int | None = None
    ) -> None:
        self.max_topics_per_request = max_topics_per_request or DEFAULT_MAX_TOPICS_PER_REQUEST
        self.views: dict[str, TopicView] = {}
        self.connected = False
        self.session: str | None = None
        self.node: str | None = None
        self.heartbeat: float | None = None
        self.counters = Counters()
        self._ids = itertools.count(1)
        self._requests: dict[int, _Request] = {}
        self._pings: dict[int, float] = {}
        self._queued: dict[str, None] = {}  # topics to resubscribe at the next flush
        for topic in _checked(topics):
            self.views[topic] = TopicView(topic)

    # --- what the application asks for --------------------------------------

    @property
    def topics(self) -> list[str]:
        return list(self.views)

    def view(self, topic: str) -> TopicView | None:
        return self.views.get(topic)

    def subscribe(self, topics: Iterable[str]) -> list[Send]:
        """Want ``topics``; the frames to send now (none while disconnected).

        Subscribing to a topic already held keeps its view and resumes it
        from its position: nothing is lost and nothing repeats.
        """
        wanted = _checked(topics)
        for topic in wanted:
            self.views.setdefault(topic, TopicView(topic))
        return self._subscribe_frames(wanted) if self.connected else []

    def unsubscribe(self, topics: Iterable[str]) -> list[Send]:
        """Forget ``topics`` and their state; the frames to send now."""
        dropped = [topic for topic in _checked(topics) if self.views.pop(topic, None)]
        if not dropped or not self.connected:
            return []
        request_id = next(self._ids)
        self._requests[request_id] = _Request("unsubscribe", tuple(dropped))
        return [Send({"type": "unsubscribe", "id": request_id, "topics": dropped})]

    def authenticate(self, token: str) -> Send:
        """An ``auth`` request refreshing the connection's token; answered by
        an :class:`Authed` or a :class:`GatewayError` carrying its id."""
        request_id = next(self._ids)
        self._requests[request_id] = _Request("auth", ())
        return Send({"type": "auth", "id": request_id, "token": token})

    @property
    def resubscribe_due(self) -> bool:
        """True when topics wait for :meth:`flush` (after a gap or a rate limit)."""
        return bool(self._queued)

    def flush(self) -> list[Send]:
        """One ``subscribe`` (split only past the per-request limit) for every
        topic queued since the last flush, each resuming from its position."""
        topics = [
            topic
            for topic in self._queued
            if topic in self.views and self.views[topic].pending is None
        ]
        self._queued.clear()
        if not topics or not self.connected:
            return []
        self.counters.resubscribes += len(topics)
        return self._subscribe_frames(topics)

    def ping(self, now: float) -> Send:
        """An application ``ping``; ``now`` is any monotonic clock reading."""
        request_id = next(self._ids)
        self._pings[request_id] = now
        return Send({"type": "ping", "id": request_id})

    def ping_overdue(self, now: float, timeout: float) -> bool:
        """True when a ping has waited for its pong longer than ``timeout``."""
        return any(now - sent > timeout for sent in self._pings.values())

    # --- connection events --------------------------------------------------

    def connection_made(self) -> list[Send]:
        """A new connection: resubscribe every topic, resuming from its position."""
        self.connected = True
        self._queued.clear()
        self._requests.clear()
        self._pings.clear()
        return self._subscribe_frames(list(self.views))

    def connection_lost(self) -> None:
        self.connected = False
        self._queued.clear()  # the next connection resubscribes everything
        self._requests.clear()
        self._pings.clear()
        for view in self.views.values():
            view.pending = None

    # --- frames from the gateway --------------------------------------------

    def receive(self, message: Any) -> list[Output]:
        """One decoded gateway frame; what follows from it. Never raises."""
        if not isinstance(message, dict):
            self.counters.bad_frames += 1
            return []
        kind = message.get("type")
        handler = self._handlers.get(kind) if isinstance(kind, str) else None
        if handler is None:  # unknown types are ignored: the gateway may grow
            return []
        try:
            return handler(self, message)
        except (KeyError, TypeError, ValueError):
            self.counters.bad_frames += 1
            return []

    def _on_event(self, message: dict[str, Any]) -> list[Output]:
        view = self._live_view(message["topic"])
        if view is None:
            return []
        seq = _int(message["seq"])
        verdict = arrival(view.seq, seq)
        if verdict is Arrival.OK:
            view.seq, view.ts = seq, message.get("ts")
            view.state = apply_patch(view.state, message.get("data"))
            self.counters.events += 1
            kind = message.get("kind")
            return [
                Update(
                    view.topic,
                    seq,
                    kind if isinstance(kind, str) else "event",
                    view.state,
                    message.get("data"),
                    view.ts,
                )
            ]
        # A gap, a repeat, a step backwards, or an event before any snapshot:
        # never apply it; queue the topic to be restarted from what we hold.
        if verdict.repeat:
            self.counters.duplicates += 1
        else:
            self.counters.gaps += 1
        self._queued[view.topic] = None
        return []

    def _on_snapshot(self, message: dict[str, Any]) -> list[Output]:
        view = self._live_view(message["topic"])
        if view is None:
            return []
        seq, state = _int(message["seq"]), message.get("state")
        if seq < 0:
            raise ValueError("negative seq")
        self.counters.snapshots += 1
        if seq == view.seq and state == view.state:
            return []  # the same position again (a conflation resend): nothing changed
        view.seq, view.state, view.ts = seq, state, message.get("ts")
        return [Update(view.topic, seq, "snapshot", state, None, view.ts, snapshot=True)]

    def _on_subscribed(self, message: dict[str, Any]) -> list[Output]:
        request = self._requests.pop(_int(message["id"]), None)
        if request is None:
            return []
        granted = set(message.get("topics") or ())
        refused = []
        for topic in request.topics:
            view = self.views.get(topic)
            if view is None or view.pending != message["id"]:
                continue  # unsubscribed or resubscribed since: a newer request rules
            if topic in granted:
                view.pending = None
            else:
                refused.append(topic)
                del self.views[topic]
        if not refused:
            return []
        text = "; ".join(request.refusals) or "not allowed by the token"
        return [GatewayError("forbidden", text, message["id"], tuple(refused))]

    def _on_error(self, message: dict[str, Any]) -> list[Output]:
        request_id = message.get("id")
        code, text = str(message.get("code")), str(message.get("message", ""))
        if not isinstance(request_id, int):  # an error about no request of ours
            return [GatewayError(code, text, request_id)]
        request = self._requests.get(request_id)
        if request is None or request.kind != "subscribe":
            return [GatewayError(code, text, request_id)]
        if code == "forbidden":
            # the `subscribed` that follows leaves those topics out: report them then
            request.refusals.append(text)
            return []
        if code == "rate_limited":
            # Refused for now, not for good: what the gateway held it still
            # streams. Keep every topic and ask again at a later flush.
            del self._requests[request_id]
            for topic in request.topics:
                view = self.views.get(topic)
                if view is not None and view.pending == request_id:
                    view.pending = None
                    self._queued[topic] = None
            return [GatewayError(code, text, request_id)]
        # The whole subscribe was refused: those topics are not held.
        del self._requests[request_id]
        refused = []
        for topic in request.topics:
            view = self.views.get(topic)
            if view is not None and view.pending == request_id:
                refused.append(topic)
                del self.views[topic]
        return [GatewayError(code, text, request_id, tuple(refused))]

    def _on_authed(self, message: dict[str, Any]) -> list[Output]:
        request_id = message["id"]
        self._requests.pop(request_id, None)
        return [Authed(_int(request_id), _int(message["exp"]))]

    def _on_pong(self, message: dict[str, Any]) -> list[Output]:
        request_id = message.get("id")
        if isinstance(request_id, int):
            self._pings.pop(request_id, None)
        return []

    def _on_welcome(self, message: dict[str, Any]) -> list[Output]:
        heartbeat = message.get("heartbeat")
        self.session, self.node = str(message.get("session")), str(message.get("node"))
        self.heartbeat = float(heartbeat) if isinstance(heartbeat, int | float) else None
        protocol = message.get("protocol")
        return [Welcomed(self.session, self.node, self.heartbeat, protocol)]

    def _on_reconnect(self, message: dict[str, Any]) -> list[Output]:
        after_ms = message.get("after_ms")
        after_ms = max(0, int(after_ms)) if isinstance(after_ms, int | float) else 0
        return [ReconnectHint(after_ms, str(message.get("reason", "")))]

    def _on_unsubscribed(self, message: dict[str, Any]) -> list[Output]:
        request_id = message.get("id")
        if isinstance(request_id, int):
            self._requests.pop(request_id, None)
        return []

    _handlers = {  # a class-level dispatch table: type -> handler
        "event": _on_event,
        "snapshot": _on_snapshot,
        "subscribed": _on_subscribed,
        "unsubscribed": _on_unsubscribed,
        "error": _on_error,
        "pong": _on_pong,
        "authed": _on_authed,
        "welcome": _on_welcome,
        "reconnect": _on_reconnect,
    }

    # --- helpers --------------------------------------------------------------

    def _live_view(self, topic: Any) -> TopicView | None:
        """The view a topic frame applies to, or None when it must be dropped."""
        view = self.views.get(topic) if isinstance(topic, str) else None
        if view is None:
            return None  # not (or no longer) subscribed
        if view.pending is not None:
            self.counters.dropped_in_flight += 1
            return None
        return view

    def _subscribe_frames(self, topics: list[str]) -> list[Send]:
        frames = []
        step = self.max_topics_per_request
        for start in range(0, len(topics), step):
            batch = topics[start : start + step]
            request_id = next(self._ids)
            self._requests[request_id] = _Request("subscribe", tuple(batch))
            message: dict[str, Any] = {"type": "subscribe", "id": request_id, "topics": batch}
            since = {}
            for topic in batch:
                view = self.views[topic]
                view.pending = request_id
                if view.seq is not None:
                    since[topic] = view.seq
            if since:
                message["since"] = since
            frames.append(Send(message))
        return frames


def _checked(topics: Iterable[str]) -> list[str]:
    if isinstance(topics, str):
        topics = [topics]
    unique = list(dict.fromkeys(topics))
    for topic in unique:
        if not is_valid_topic(topic):
            raise ValueError(
                f"invalid topic {topic!r}: 1 to 8 dot-separated tokens of [A-Za-z0-9_-]"
            )
    return unique


def _int(value: Any) -> int:
    if type(value) is not int:
        raise TypeError(f"expected an integer, got {value!r}")
    return value
