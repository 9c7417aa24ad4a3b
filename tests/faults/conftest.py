"""The fault-injection suite: run on demand (``make test-faults``), never in
the default ``make test``. Without ``SCORECAST_FAULTS=1`` nothing here is
collected."""

from __future__ import annotations

import os

import nats
import pytest

from tests.faults.harness import GatewayProcess
from tests.support import create_stream

if not os.environ.get("SCORECAST_FAULTS"):
    collect_ignore_glob = ["test_*.py"]


# nats_server: the suite's own fixture (tests/conftest.py), a fresh nats-server


@pytest.fixture
async def js(nats_server):
    """JetStream on a connection that retries through faults, SCORES created."""
    client = await nats.connect(nats_server.url, max_reconnect_attempts=-1, reconnect_time_wait=0.2)
    stream = client.jetstream(timeout=5)
    await create_stream(stream)
    yield stream
    await client.close()


@pytest.fixture(autouse=True)
def _no_gateway_left():
    yield
    while GatewayProcess.running:
        GatewayProcess.running.pop().stop()
