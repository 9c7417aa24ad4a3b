"""Publishers: everything that writes events into the SCORES stream.

- :mod:`publishers.stream`     the SCORES stream and :class:`TopicPublisher`, the one writer
- :mod:`publishers.feed`       the feed item format shared by ingest and replay (pure)
- :mod:`publishers.football`   a believable football match as a state machine (pure)
- :mod:`publishers.simulator`  N concurrent simulated matches and the ``football.live`` board
- :mod:`publishers.ingest`     ``POST /v1/events``: an HTTP endpoint for data feeds
- :mod:`publishers.replay`     publish a recorded NDJSON feed at its pace or faster
- :mod:`publishers.connection` how publishers connect to NATS and set up the stream
- :mod:`publishers.errors`     the error tree
"""

__all__: list[str] = []
