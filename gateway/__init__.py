"""The scorecast gateway: NATS in, WebSockets out.

Sans-I/O core (no asyncio, nats or websockets imports):

- :mod:`gateway.topic`    one topic: position, snapshot, recent history, order checks
- :mod:`gateway.hub`      who subscribes to what; first and last subscriber
- :mod:`gateway.outbox`   what a connection is owed; the slow-client policy

I/O adapters around it:

- :mod:`gateway.broker_nats`  NATS / JetStream (the ``Broker`` port of :mod:`gateway.broker`)
- :mod:`gateway.node`         glues hub, broker and connections on one event loop
- :mod:`gateway.connection`   one client WebSocket
- :mod:`gateway.server`       the HTTP/WebSocket listener and its endpoints
"""
