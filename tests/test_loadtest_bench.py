"""``scorecast bench`` end to end at a tiny size: real nats-servers, a real
gateway, the naive server and generator processes; figures are checked for
presence and for zero loss, never for speed."""

from __future__ import annotations

import json

import pytest

from loadtest.bench import main
from loadtest.bench_report import render_markdown

TINY = [
    "--connections", "50",
    "--events", "20",
    "--hot-rate", "200",
    "--burst-events", "10",
    "--topics", "20",
    "--topics-per-connection", "3",
    "--many-events", "60",
    "--many-rate", "600",
    "--settle", "0.3",
    "--drain", "10",
]  # fmt: skip


def test_bench_runs_every_scenario_against_every_server(tmp_path, capsys):
    out = tmp_path / "bench.json"
    table = tmp_path / "bench.md"
    assert main([*TINY, "--json", str(out), "--markdown", str(table)]) == 0

    report = json.loads(out.read_text())
    assert report["machine"]["nproc"] >= 1
    assert report["command"].startswith("scorecast bench --connections 50")
    results = report["results"]
    assert set(results) == {"hot", "many", "idle", "storm"}
    for scenario, by_server in results.items():
        assert set(by_server) == {"scorecast", "nats", "naive"}, scenario
        for name, figures in by_server.items():
            assert "error" not in figures, (scenario, name, figures)
            assert figures["open"]["opened"] == 50, (scenario, name)

    for scenario in ("hot", "many"):
        for name, figures in results[scenario].items():
            assert figures["delivered"] > 0, (scenario, name)
            assert figures["cpu_us_per_delivery"] is not None
            assert figures["latency_p99_ms"] is not None
            assert figures["lost"] >= 0
        mine = results[scenario]["scorecast"]
        assert mine["lost"] == 0 and mine["duplicates"] == 0 and mine["gaps"] == 0, mine
        assert mine["delivered"] == mine["expected"]
    assert results["hot"]["scorecast"]["expected"] == 50 * 20
    assert results["hot"]["scorecast"]["burst_lost"] == 0
    assert results["idle"]["scorecast"]["rss_per_connection_kib"] is not None
    for figures in results["storm"].values():
        assert figures["connections_per_second"] > 0
        assert figures["open"]["ready_p99_ms"] is not None

    markdown = table.read_text()
    assert markdown == render_markdown(report) + "\n"
    assert "| server CPU per delivery (us) |" in markdown
    assert "scorecast / nats-server WS" in markdown
    assert "### Targets (scorecast)" in markdown
    assert "connections per second" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--servers", "scorecast,apache"], "--servers takes"),
        (["--scenarios", "hot,soak"], "--scenarios takes"),
        (["--connections", "0"], "needs at least one connection"),
        (["--topics", "5", "--topics-per-connection", "6"], "cannot exceed --topics"),
        (["--hot-rate", "-1"], "must not be negative"),
        (["--connections", "20000", "--generators", "1"], "raise --generators"),
    ],
)
def test_bench_refuses_bad_input_with_a_reason(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
