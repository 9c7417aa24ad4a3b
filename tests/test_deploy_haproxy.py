"""deploy/haproxy.cfg: valid for `haproxy -c`, and doing its job on loopback.

The second test runs Debian's haproxy with the same file, rewritten only where
Docker differs from this machine (the gateways' addresses come from Docker's
DNS there, fixed loopback ports here; listen ports are free ones), in front of
two real gateways: WebSocket upgrades pass, both gateways get clients, and a
gateway that goes away costs new clients nothing (retry and redispatch).
"""

from __future__ import annotations

import asyncio
import re
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from scorecast.gateway.server import Gateway
from scorecast.gateway.settings import GatewaySettings
from scorecast.natsserver import free_port
from tests.support import RawPublisher, Recorder, create_stream

REPO = Path(__file__).resolve().parent.parent
CONFIG = REPO / "deploy" / "haproxy.cfg"


def haproxy() -> str:
    binary = shutil.which("haproxy")
    if binary is None:
        pytest.fail("haproxy is needed: `apt-get install -y haproxy`", pytrace=False)
    return binary


def test_config_is_valid():
    result = subprocess.run([haproxy(), "-c", "-f", str(CONFIG)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "[WARNING]" not in result.stdout + result.stderr, result.stdout + result.stderr


def test_config_says_what_websockets_need():
    text = CONFIG.read_text()
    assert re.search(r"^\s*timeout tunnel\s+\d+[hm]\b", text, re.M), "long tunnel timeout"
    assert re.search(r"http-check send meth GET uri /readyz", text)
    assert re.search(r"http-check expect status 200", text)
    assert "balance leastconn" in text


def loopback_config(ports: list[int], front: int, stats: int) -> str:
    """The deployed file, with loopback addresses where Docker's DNS would answer."""
    text = CONFIG.read_text()
    servers = "\n".join(f"    server gw{i} 127.0.0.1:{port}" for i, port in enumerate(ports))
    text, count = re.subn(r"^\s*server-template .*$", servers, text, flags=re.M)
    assert count == 1
    text = text.replace(" resolvers docker init-addr none resolve-prefer ipv4", "")
    text = text.replace("bind :8080", f"bind 127.0.0.1:{front}")
    text = text.replace("bind :8404", f"bind 127.0.0.1:{stats}")
    # this machine's file limit is lower than a production host's
    return re.sub(r"maxconn \d+", "maxconn 2000", text)


def wait_listening(port: int, process: subprocess.Popen, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        assert process.poll() is None, f"haproxy exited with {process.returncode}"
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            assert time.monotonic() < deadline, f"haproxy does not listen on {port}"
            time.sleep(0.05)


@pytest.fixture
async def gateways(nats_server):
    nodes = [
        Gateway(GatewaySettings(nats=(nats_server.url,), port=0, node=name, drain_window=0.5))
        for name in ("gw-a", "gw-b")
    ]
    for node in nodes:
        await node.start()
    yield nodes
    for node in nodes:
        await node.stop()


@pytest.fixture
def balancer(gateways, tmp_path):
    front, stats = free_port(), free_port()
    config = tmp_path / "haproxy.cfg"
    config.write_text(loopback_config([g.port for g in gateways], front, stats))
    log = open(tmp_path / "haproxy.log", "wb")  # noqa: SIM115 - closed below
    process = subprocess.Popen([haproxy(), "-db", "-f", str(config)], stdout=log, stderr=log)
    try:
        wait_listening(front, process)
        yield front, stats
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def server_checks(stats: int) -> dict[str, str]:
    """Each gateway server's last health-check result, from the stats CSV."""
    with urllib.request.urlopen(f"http://127.0.0.1:{stats}/;csv", timeout=5) as page:
        lines = page.read().decode().splitlines()
    header = lines[0].removeprefix("# ").split(",")
    rows = [dict(zip(header, line.split(","), strict=False)) for line in lines[1:] if line]
    return {r["svname"]: r["check_status"] for r in rows if r["pxname"] == "gateways"}


async def checks_pass(stats: int, servers: set[str], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while (checks := server_checks(stats)) and any(checks.get(s) != "L7OK" for s in servers):
        assert time.monotonic() < deadline, f"health checks: {checks}"
        await asyncio.sleep(0.2)


async def welcome(front: int) -> tuple[Recorder, str]:
    client = await Recorder.open(f"ws://127.0.0.1:{front}/ws")
    frame = await client.wait_for(lambda m: m["type"] == "welcome")
    return client, frame["node"]


async def test_websockets_through_the_balancer(nc, gateways, balancer):
    front, stats = balancer
    js = nc.jetstream()
    await create_stream(js)
    clients, nodes = [], []
    try:
        for _ in range(4):
            client, node = await welcome(front)
            clients.append(client)
            nodes.append(node)
        assert set(nodes) == {"gw-a", "gw-b"}, f"leastconn should use both: {nodes}"
        # the health check (GET /readyz, expect 200) passes on both
        await checks_pass(stats, {"gw0", "gw1"})

        # frames flow both ways through the upgraded connection
        await clients[0].send({"type": "subscribe", "id": 1, "topics": ["match.lb"]})
        await clients[0].wait_for(lambda m: m["type"] == "snapshot")
        await RawPublisher(js).publish("match.lb", {"score": "1-0"})
        event = await clients[0].wait_for(lambda m: m["type"] == "event")
        assert event["seq"] == 1

        # a gateway goes away: new clients land on the other one at once
        gone = gateways[0]
        await gone.stop()
        for _ in range(4):
            client, node = await welcome(front)
            clients.append(client)
            assert node == "gw-b"

        with urllib.request.urlopen(f"http://127.0.0.1:{stats}/metrics", timeout=5) as page:
            assert b"haproxy_backend_active_servers" in page.read()
    finally:
        for client in clients:
            await client.close()
