"""``scorecast bench`` end to end at a tiny size: real nats-servers, a real
gateway, the floor and naive servers and generator processes; figures are
checked for presence and for zero loss, never for speed."""

from __future__ import annotations

import json

import pytest

from scorecast.loadtest.bench import main
from scorecast.loadtest.bench_report import render_markdown

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
        assert set(by_server) == {"scorecast", "floor", "nats", "naive"}, scenario
        for name, figures in by_server.items():
            assert "error" not in figures, (scenario, name, figures)
            assert figures["open"]["opened"] == 50, (scenario, name)

    for scenario in ("hot", "many"):
        for name, figures in results[scenario].items():
            assert figures["delivered"] > 0, (scenario, name)
            assert figures["cpu_us_per_delivery"] is not None
            assert figures["write_calls_per_delivery"] is not None
            assert figures["latency_p99_ms"] is not None
            assert figures["lost"] >= 0
        for name in ("scorecast", "floor"):  # the floor too: one frame per client per event
            mine = results[scenario][name]
            assert mine["lost"] == 0 and mine["duplicates"] == 0 and mine["gaps"] == 0, mine
            assert mine["delivered"] == mine["expected"], name
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
    assert "scorecast / floor (bare writes)" in markdown
    floor_targets = [t for t in report["targets"] if "the floor's" in t["target"]]
    assert [t["target"].split(" <=")[0] for t in floor_targets] == [
        "hot: server CPU per delivery",
        "hot: server CPU per write() call",
        "many: server CPU per delivery",
        "many: server CPU per write() call",
    ]
    assert all(t["goal"] != "-" and t["met"] in (True, False) for t in floor_targets)
    assert any("memory per connection <= 5 KiB" in t["target"] for t in report["targets"])
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


def test_floor_server_delivers_only_to_a_topics_subscribers(tmp_path, capsys):
    """The floor in the many-matches shape: every connection gets every event of
    its own topics and nothing of the others' (the generator counts any frame
    it did not expect as a duplicate or an unparsable event)."""
    out = tmp_path / "floor.json"
    argv = [*TINY, "--servers", "floor", "--scenarios", "many,storm", "--json", str(out)]
    assert main(argv) == 0
    results = json.loads(out.read_text())["results"]
    many = results["many"]["floor"]
    assert "error" not in many, many
    assert many["expected"] < 50 * 60  # each connection holds 3 of 20 topics
    assert many["delivered"] == many["expected"] and many["lost"] == 0
    assert many["duplicates"] == 0 and many["gaps"] == 0 and not many["errors"], many
    assert many["write_calls"] >= 1  # counted from /proc/PID/io
    assert results["storm"]["floor"]["open"]["opened"] == 50


def test_reconnect_scenario_resumes_every_connection_with_a_replay(tmp_path):
    """All drop, events are stored, all come back with ``since``: each one is
    replayed to the head (a snapshot instead would be counted as an error)."""
    out = tmp_path / "reconnect.json"
    argv = [*TINY, "--servers", "scorecast,floor", "--scenarios", "reconnect", "--json", str(out)]
    assert main(argv) == 0
    report = json.loads(out.read_text())
    figures = report["results"]["reconnect"]["scorecast"]
    assert "error" not in figures, figures
    assert figures["open"]["opened"] == 50 and figures["resumed"]["opened"] == 50
    assert figures["resumed"]["errors"] == {} and figures["resumed"]["failed"] == 0
    assert figures["connections_per_second"] > 0 and figures["resumed_to_fresh"] > 0
    assert "skipped" in report["results"]["reconnect"]["floor"]
    assert any(t["target"].startswith("reconnect:") for t in report["targets"])


def test_floor_server_answers_a_bad_request_with_a_status(tmp_path):
    """Bad input gets an HTTP status, not a traceback or a hang."""
    import asyncio

    from scorecast.loadtest.bench_floor import FloorConnection, accept_value

    # RFC 6455 section 1.3's example key and answer
    assert accept_value(b"dGhlIHNhbXBsZSBub25jZQ==") == b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="

    async def scenario() -> list[bytes]:
        audience: dict = {}
        server = await asyncio.get_running_loop().create_server(
            lambda: FloorConnection(audience), "127.0.0.1", 0
        )
        port = server.sockets[0].getsockname()[1]
        answers = []
        for request in (b"POST /ws HTTP/1.1\r\nHost: x\r\n\r\n", b"GET /ws HTTP/1.1\r\n\r\n"):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(request)
            answers.append(await asyncio.wait_for(reader.read(), 10))
            writer.close()
        server.close()
        assert audience == {}
        return answers

    for answer in asyncio.run(scenario()):
        assert answer.startswith(b"HTTP/1.1 400 Bad Request\r\n"), answer
