"""``scorecast storm`` at small scale against a real gateway and nats-server.

The storm's own result is checked against the gateway's ``/metrics``: every
handshake the clients count, the gateway counts, and every event frame the
gateway queued, a client received, with positions that only move forward.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from scorecast.loadtest.stack import ROOT, GatewayProcesses, metrics_of
from scorecast.loadtest.storm import main as storm_main
from scorecast.natsserver import free_port


@pytest.fixture
def gateway(nats_server, tmp_path):
    with GatewayProcesses(nats_server.url, [free_port()], log_dir=str(tmp_path)) as gateways:
        yield gateways


def storm(tmp_path, *args: str) -> dict:
    output = tmp_path / "result.json"
    command = [sys.executable, "-m", "scorecast.loadtest.storm", "--output", str(output), *args]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=90)
    assert done.returncode == 0, done.stderr
    assert "result written" in done.stderr
    return json.loads(output.read_text())


def test_storm_matches_gateway_counters(gateway, nats_server, tmp_path):
    port = gateway.ports[0]
    before = metrics_of(port)
    result = storm(
        tmp_path,
        *("--url", gateway.urls[0], "--nats", nats_server.url),
        *("--connections", "300", "--workers", "2", "--rate", "300"),
        *("--topics", "12", "--topics-per-client", "2", "--publish-rate", "40"),
        *("--duration", "4", "--drain", "1", "--topic-prefix", "plain."),
    )
    after = metrics_of(port)

    def grew(name: str) -> float:
        return after[name] - before.get(name, 0.0)

    totals = result["totals"]
    assert totals["subscribed"] == totals["opened"] == 300
    assert totals["peak_connections"] == 300
    assert totals["connect_failures"] == totals["drops"] == 0
    assert totals["gaps"] == totals["duplicates"] == totals["backwards"] == 0
    assert totals["no_snapshot"] == totals["error_frames"] == 0
    assert totals["snapshots"] == 600  # one per topic per connection
    assert totals["published"] > 100 and totals["publish_errors"] == 0
    assert totals["events"] > 0
    # the gateway saw exactly what the clients saw
    assert grew("scorecast_connections_opened_total") == 300
    assert grew("scorecast_connections_closed_total") == 300
    assert grew("scorecast_deliveries_total") == totals["events"]
    # (a topic's events before its first subscriber may never reach this gateway)
    assert 0 < grew("scorecast_messages_in_total") <= totals["published"]
    assert result["gateway"]["scorecast_deliveries_total"] == totals["events"]
    # the time series covers the run and adds up
    series = result["series"]
    assert len(series) >= 4
    assert sum(row["msgs"] for row in series) <= totals["events"]
    assert max(row["connections"] for row in series) == 300
    assert sum(row["published"] for row in series) == totals["published"]
    assert result["latency"]["delivery"]["p99_ms"] is not None
    assert result["latency"]["first_snapshot"]["count"] == 300
    assert [w["clients"] for w in result["workers"]] == [150, 150]


def test_storm_mass_reconnect_resumes_with_since(gateway, nats_server, tmp_path):
    result = storm(
        tmp_path,
        *("--url", gateway.urls[0], "--nats", nats_server.url),
        *("--connections", "200", "--workers", "2", "--rate", "400", "--sources", "2"),
        *("--topics", "5", "--topics-per-client", "2", "--publish-rate", "50"),
        *("--duration", "5", "--drain", "1", "--reconnect-at", "2.5"),
        *("--topic-prefix", "again."),
    )
    totals = result["totals"]
    assert totals["forced_drops"] == 200
    assert totals["reconnects"] == 200
    assert totals["opened"] == 400
    assert totals["gaps"] == totals["duplicates"] == totals["backwards"] == 0
    assert totals["no_snapshot"] == totals["drops"] == totals["connect_failures"] == 0
    after = metrics_of(gateway.ports[0])
    assert after["scorecast_connections_opened_total"] == 400
    assert result["settings"]["sources"] == ["127.0.0.1", "127.0.0.2"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--url", "ws://10.0.0.1:8080/ws"], "loopback addresses only"),
        (["--url", "http://127.0.0.1:8080/"], "expected ws://"),
        (["--connections", "0"], "--connections must be at least 1"),
        (["--per-worker", "50000", "--connections", "50000"], "open-file limit"),
        (["--sources", "192.168.1.4"], "not an IPv4 loopback"),
        (["--connections", "60000", "--sources", "2", "--workers", "4"], "ephemeral ports"),
        (["--reconnect-at", "90", "--duration", "10"], "inside --duration"),
        (["--topics", "3", "--topics-per-client", "4"], "cannot exceed --topics"),
    ],
)
def test_storm_refuses_bad_settings(args, message, capsys):
    assert storm_main(args) == 2
    assert message in capsys.readouterr().err
