"""Shared fixtures: real nats-server processes on free ports, never a mock."""

from __future__ import annotations

import os

import nats
import pytest

from scorecast.natsserver import NatsServer


@pytest.fixture
def nats_server(tmp_path):
    """A fresh nats-server with JetStream, file store under tmp_path."""
    server = NatsServer(
        store_dir=str(tmp_path / "js"),
        binary=os.environ.get("NATS_SERVER_BIN"),
        log_file=str(tmp_path / "nats.log"),
    )
    (tmp_path / "js").mkdir()
    server.start()
    yield server
    server.stop()


@pytest.fixture
async def nc(nats_server):
    """A NATS client connected to ``nats_server``."""
    client = await nats.connect(nats_server.url)
    yield client
    await client.close()
