"""Who subscribes to what, on this gateway node. Sans-I/O.

``attach`` reports whether the topic is new here, so the node subscribes to
NATS once per topic; ``detach`` reports when nobody holds it any more. An
unheld topic stays until :meth:`Hub.remove` (the core keeps it a while, so
clients that come back find its position and history in memory).
Connections are any hashable objects.
"""

from __future__ import annotations

from collections.abc import Hashable

from scorecast.gateway.topic import Topic

__all__ = ["Hub"]


class Hub:
    def __init__(self, history: int) -> None:
        self.history = history
        self.topics: dict[str, Topic] = {}
        self.by_connection: dict[Hashable, set[str]] = {}

    def topic(self, name: str) -> Topic | None:
        return self.topics.get(name)

    def attach(self, connection: Hashable, name: str) -> tuple[Topic, bool]:
        """Hold ``name`` for ``connection``; True when the topic is new here."""
        topic = self.topics.get(name)
        created = topic is None
        if topic is None:
            topic = self.topics[name] = Topic(name, self.history)
        topic.holders.add(connection)
        self.by_connection.setdefault(connection, set()).add(name)
        return topic, created

    def detach(self, connection: Hashable, name: str) -> bool:
        """Drop ``name`` for ``connection``; True when nobody here holds it any
        more (the topic itself stays until :meth:`remove`)."""
        names = self.by_connection.get(connection)
        if names is None or name not in names:
            return False
        names.discard(name)
        if not names:
            del self.by_connection[connection]
        topic = self.topics[name]
        topic.subscribers.discard(connection)
        topic.holders.discard(connection)
        return not topic.holders

    def remove(self, name: str) -> None:
        """Forget the topic ``name`` (nobody holds it)."""
        del self.topics[name]

    def detach_all(self, connection: Hashable) -> list[str]:
        """Drop every topic of ``connection``; the names nobody holds any more."""
        names = list(self.by_connection.get(connection, ()))
        return [name for name in names if self.detach(connection, name)]

    def holds(self, connection: Hashable, name: str) -> bool:
        return name in self.by_connection.get(connection, ())

    def topic_count(self, connection: Hashable) -> int:
        return len(self.by_connection.get(connection, ()))
