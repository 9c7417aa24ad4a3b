"""Shared fixtures: real nats-server processes on free ports, never a mock."""

from __future__ import annotations

import dataclasses
import os

import nats
import pytest

from scorecast.gateway.server import Gateway
from scorecast.gateway.settings import GatewaySettings
from scorecast.natsserver import NatsServer
from tests.support import create_stream


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


@pytest.fixture
async def js(nc):
    """JetStream with the SCORES stream created as publishers create it."""
    js = nc.jetstream()
    await create_stream(js)
    return js


@pytest.fixture
def gateway_settings(nats_server) -> GatewaySettings:
    return GatewaySettings(nats=(nats_server.url,), port=0, node="test")


@pytest.fixture
async def gateway(gateway_settings):
    """A real gateway in the test's loop, on a free port."""
    gw = Gateway(gateway_settings)
    await gw.start()
    yield gw
    await gw.stop()


@pytest.fixture
async def make_gateway(gateway_settings):
    """Start gateways with settings changed from ``gateway_settings``."""
    started: list[Gateway] = []

    async def make(**changes) -> Gateway:
        gw = Gateway(dataclasses.replace(gateway_settings, **changes))
        await gw.start()
        started.append(gw)
        return gw

    yield make
    for gw in started:
        await gw.stop()
