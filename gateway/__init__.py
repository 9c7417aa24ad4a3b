"""The scorecast gateway: NATS in, WebSockets out.

Sans-I/O core (no asyncio, nats or websockets imports):

- :mod:`gateway.core`     every delivery decision: one phase per (connection, topic),
  effects out (writes, closes, broker reads and subscriptions)
- :mod:`gateway.topic`    one topic: position, snapshot, recent history, order checks
- :mod:`gateway.hub`      who subscribes to what; first and last subscriber
- :mod:`gateway.outbox`   what a connection is owed; the slow-client policy

I/O adapters around it:

- :mod:`gateway.broker_nats`  NATS / JetStream (the ``Broker`` port of :mod:`gateway.broker`)
- :mod:`gateway.broker_memory` the same port in memory, for the core's tests
- :mod:`gateway.node`         runs the core's effects on one event loop
- :mod:`gateway.supervise`    the task group: failed tasks logged, loops restarted
- :mod:`gateway.connection`   one client WebSocket
- :mod:`gateway.server`       the HTTP/WebSocket listener and its endpoints
"""
