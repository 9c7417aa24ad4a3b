"""The locust user, run headless by locust itself against a real gateway.

Everything is read back from locust's own CSV output: connects, snapshots
and events are recorded, and nothing counted as a failure (no refused
connect, no drop, no gap, duplicate or step backwards).
"""

from __future__ import annotations

import asyncio
import csv
import sys
from pathlib import Path

import pytest

from scorecast.loadtest.publisher import FixedRatePublisher
from scorecast.loadtest.stack import ROOT, GatewayProcesses
from scorecast.natsserver import free_port

LOCUST = str(Path(sys.executable).with_name("locust"))


@pytest.fixture
def gateway(nats_server, tmp_path):
    with GatewayProcesses(nats_server.url, [free_port()], log_dir=str(tmp_path)) as gateways:
        yield gateways


async def run_locust(gateway, nc, tmp_path, files: str, *args: str) -> dict[str, dict]:
    publisher = FixedRatePublisher(nc.jetstream(), [f"match.{n}" for n in range(1, 9)], rate=40.0)
    await publisher.prepare()
    publishing = asyncio.create_task(publisher.run(30.0))
    prefix = tmp_path / "locust"
    process = await asyncio.create_subprocess_exec(
        LOCUST, "-f", files, "--headless", "--csv", str(prefix), "--only-summary",
        "--host", f"ws://127.0.0.1:{gateway.ports[0]}", "--scorecast-topics", "8",
        "--scorecast-first-id", "1", "--scorecast-seed", "7", "--loglevel", "WARNING", *args,
        cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    output, _ = await asyncio.wait_for(process.communicate(), 60)
    publishing.cancel()
    assert process.returncode == 0, output.decode()[-3000:]
    assert publisher.published > 0
    with open(f"{prefix}_stats.csv", newline="") as file:
        stats = {row["Name"]: row for row in csv.DictReader(file)}
    with open(f"{prefix}_failures.csv", newline="") as file:
        failures = list(csv.DictReader(file))
    assert failures == [], failures
    assert int(stats["Aggregated"]["Failure Count"]) == 0
    return stats


def count(stats: dict[str, dict], name: str) -> int:
    return int(stats[name]["Request Count"]) if name in stats else 0


async def test_locust_user_records_connects_snapshots_and_events(gateway, nc, tmp_path):
    stats = await run_locust(
        gateway, nc, tmp_path, "loadtest/locustfile.py",
        *("-u", "20", "-r", "10", "-t", "10s", "--scorecast-topics-per-user", "2"),
        "--scorecast-ping-interval", "1",
    )  # fmt: skip
    assert count(stats, "connect") == 20
    assert count(stats, "subscribe") == 20
    assert count(stats, "snapshot") == 40
    assert count(stats, "event") > 20
    assert count(stats, "pong") > 0
    assert float(stats["event"]["Average Response Time"]) > 0


async def test_locust_storm_shape_mass_reconnect(gateway, nc, tmp_path):
    stats = await run_locust(
        gateway, nc, tmp_path, "loadtest/locustfile.py,loadtest/locust_storm.py",
        *("-u", "20", "-r", "20", "--scorecast-hold", "2", "--scorecast-hold-after", "2"),
        *("--scorecast-reconnect-jitter", "0.3", "--scorecast-topics-per-user", "1"),
    )  # fmt: skip
    # everyone connected twice: once at the start, once after the mass reconnect
    assert count(stats, "connect") == 40
    assert count(stats, "subscribe") == 40
    # the resubscribe carried since: a topic with a position got no new snapshot
    assert 20 <= count(stats, "snapshot") < 40
    assert count(stats, "event") > 20
    assert count(stats, "drop") == 0
