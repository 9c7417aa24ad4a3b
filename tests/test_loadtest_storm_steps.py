"""``scorecast storm --steps`` (the cost curve), the mass reconnect's rates, the
memory figures they rest on, and storm's defaults against ``scorecast dev``.

Tiny scale, real servers: a nats-server, gateway processes, ``scorecast dev``.
No timed assertions: figures are checked for being there and adding up.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys

import pytest

from scorecast.loadtest.procstat import ProcessGroup, kernel_memory, pss
from scorecast.loadtest.report import main as report_main
from scorecast.loadtest.stack import ROOT, GatewayProcesses
from scorecast.loadtest.storm import main as storm_main
from scorecast.loadtest.storm_settings import StormSettings, add_arguments, settings_from_args
from scorecast.loadtest.storm_steps import curve, reconnect_summary
from scorecast.natsserver import free_port


@pytest.fixture
def gateway(nats_server, tmp_path):
    with GatewayProcesses(
        nats_server.url, [free_port()], workers=2, log_dir=str(tmp_path)
    ) as gateways:
        yield gateways


def storm(tmp_path, *args: str, env: dict | None = None) -> tuple[dict, str]:
    output = tmp_path / "result.json"
    command = [sys.executable, "-m", "scorecast.loadtest.storm", "--output", str(output), *args]
    done = subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, timeout=120,
        env=dict(os.environ, PYTHONPATH=str(ROOT), **(env or {})),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return json.loads(output.read_text()), done.stderr


def test_steps_measure_each_step_and_deliver_one_goal_to_every_client(
    gateway, nats_server, tmp_path
):
    result, log = storm(
        tmp_path,
        *("--url", gateway.urls[0], "--nats", nats_server.url),
        *("--steps", "20,50", "--workers", "2", "--rate", "200", "--step-hold", "0.5"),
        *("--topics", "4", "--topic-prefix", "steps.", "--topic-first", "1"),
        *("--duration", "60", "--drain", "0.5", "--watch-pids", str(gateway.processes[0].pid)),
    )
    totals = result["totals"]
    assert totals["peak_connections"] == totals["connections_target"] == 50
    assert totals["gaps"] == totals["duplicates"] == totals["backwards"] == 0
    assert totals["no_snapshot"] == totals["errors_total"] == 0
    points, rows = result["steps"]["points"], result["steps"]["curve"]
    assert [point["step"] for point in points] == [20, 50]
    for point, held in zip(points, (20, 50), strict=True):
        assert point["reached"] is True
        assert point["handshakes_per_second"] > 0
        assert point["memory"]["connections"] == held
        goal = point["goal"]
        # every client holds the goal topic, and every one of them got the goal
        assert goal["expected"] == goal["received"] == held
        assert goal["workers"] == 2
        assert 0 <= goal["first_ms"] <= goal["last_ms"]
    assert result["settings"]["goal_topic"] == "steps.goal"
    assert result["settings"]["connections"] == 50
    # three snapshots per client: its two topics and the goal topic
    assert totals["snapshots"] == 150
    # the goals are the only events: one to 20 clients, one to 50
    assert totals["events"] == 70
    for row in rows:
        for role in ("gateway", "generator", "kernel"):
            assert f"{role}_kib_per_connection" in row
        assert row["gateway_mib"] > 10  # a gateway of two workers and a supervisor
    assert "gateway_marginal_kib" in rows[1]
    for row in rows:  # CPU per handshake, while holding, per goal frame: per role
        for key in ("cpu_ms_per_handshake", "holding_cores", "cpu_us_per_goal_delivery"):
            assert row[f"gateway_{key}"] >= 0 and row[f"generator_{key}"] >= 0
    baseline = result["memory"]["baseline"]
    assert baseline["connections"] == 0 and baseline["gateway_processes"] >= 3
    assert baseline["generator_pss"] > 0 and baseline["slab"] > 0
    assert "step 50 goal reached 50 of 50" in log
    assert report_main([str(tmp_path / "result.json"), "--png"]) == 0
    for name in ("curve-memory", "curve-time", "memory"):
        assert (tmp_path / f"result-{name}.png").read_bytes().startswith(b"\x89PNG")
    assert "Cost curve" in (tmp_path / "result.html").read_text()


def test_mass_reconnect_reports_readmission_beside_fresh_connects(gateway, nats_server, tmp_path):
    result, _ = storm(
        tmp_path,
        *("--url", gateway.urls[0], "--nats", nats_server.url),
        *("--connections", "100", "--workers", "2", "--rate", "200", "--publish-rate", "20"),
        *("--topics", "5", "--topic-prefix", "back.", "--topic-first", "1"),
        *("--duration", "4", "--drain", "0.5", "--reconnect-at", "2"),
    )
    totals = result["totals"]
    assert totals["forced_drops"] == totals["reconnects"] == 100
    assert totals["gaps"] == totals["duplicates"] == totals["backwards"] == 0
    summary = result["reconnect"]
    assert summary["cut"] == 100 and summary["all_back"] is True
    assert summary["fresh_per_second"] > 0 and summary["readmit_per_second"] > 0
    assert summary["readmit_vs_fresh"] == pytest.approx(
        summary["readmit_per_second"] / summary["fresh_per_second"], rel=0.01
    )
    assert isinstance(summary["fresh_limited_by_rate"], bool)
    assert set(summary["seconds_to_back"]) <= {"50%", "90%", "99%"}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--steps", "50,20"], "must rise"),
        (["--steps", "10,x"], "connection counts"),
        (["--steps", "10,20", "--reconnect-at", "5"], "separate runs"),
    ],
)
def test_bad_steps_are_refused(args, message, capsys):
    assert storm_main(args) == 2
    assert message in capsys.readouterr().err


def test_curve_arithmetic():
    baseline = {"connections": 0, "gateway_pss": 100 * 2**20, "slab": 50 * 2**20,
                "tcp_buffers": 0}  # fmt: skip
    steps = [
        {"step": 1000, "reached": True, "handshakes_per_second": 500.0, "goal": {"last_ms": 9},
         "memory": {"connections": 1000, "gateway_pss": 110 * 2**20, "slab": 55 * 2**20,
                    "tcp_buffers": 2**20, "available": 2**33}},
        {"step": 3000, "reached": True, "handshakes_per_second": 400.0,
         "memory": {"connections": 3000, "gateway_pss": 120 * 2**20, "slab": 60 * 2**20,
                    "tcp_buffers": 2**20}},
    ]  # fmt: skip
    first, second = curve(baseline, steps, ("gateway",))
    assert first["gateway_kib_per_connection"] == round(10 * 1024 / 1000, 2)
    assert first["gateway_marginal_kib"] == first["gateway_kib_per_connection"]
    assert first["kernel_kib_per_connection"] == round(6 * 1024 / 1000, 2)
    assert first["goal_last_ms"] == 9 and first["available_gib"] == 8.0
    assert second["gateway_kib_per_connection"] == round(20 * 1024 / 3000, 2)
    assert second["gateway_marginal_kib"] == round(10 * 1024 / 2000, 2)  # baselines left out
    assert second["kernel_marginal_kib"] == round(5 * 1024 / 2000, 2)
    assert second["gateway_mib"] == 120.0


def test_reconnect_summary_arithmetic():
    reached = [{"at": 110.0}, {"at": 108.0}]
    readmitted = [
        {"cut": 600, "cut_at": 150.0, "first_attempt_at": 151.0, "at": 154.0},
        {"cut": 400, "cut_at": 150.5, "first_attempt_at": 151.5, "at": 155.0},
    ]
    series = [{"t": t, "reconnects": 200 if t >= 151 else 0} for t in range(140, 160)]
    summary = reconnect_summary(100.0, 1000, 5000.0, reached, readmitted, series, 150.0, 2)
    assert summary["fresh_per_second"] == 100.0 and summary["fresh_limited_by_rate"] is False
    assert summary["readmit_per_second"] == 200.0 and summary["readmit_vs_fresh"] == 2.0
    assert summary["seconds_to_back"] == {"50%": 4.0, "90%": 6.0, "99%": 6.0}
    # the generator's own cutting (150 .. 151, the first reconnect attempt) left out
    assert summary["cut_seconds"] == 1.0 and summary["readmit_after_cut_per_second"] == 250.0
    assert summary["readmit_after_cut_vs_fresh"] == 2.5
    # a ramp that kept to --rate measured the schedule, and says so
    slow = reconnect_summary(100.0, 1000, 100.0, [{"at": 110.2}], readmitted, series, 150.0, 2)
    assert slow["fresh_limited_by_rate"] is True
    # a worker whose clients were not all back by the end: the series tells the rest
    for row in series:
        row["forced_drops"] = 1000 if row["t"] == 150 else 0
    partial = reconnect_summary(100.0, 1000, 5000.0, reached, readmitted[:1], series, 150.0, 2)
    assert partial["all_back"] is False and partial["cut"] == 1000
    assert partial["back_in_run"] == 1800 and partial["readmit_per_second"] == 180.0
    assert "readmit_after_cut_per_second" not in partial


def test_pss_counts_shared_pages_once_and_the_kernel_figures_are_there():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        group = ProcessGroup([os.getpid()])
        memory = group.memory()
        assert memory["processes"] >= 2
        # a shared page counts 1/n in each of its n processes: the group's PSS is
        # below the sum of resident sets, which counts it n times
        assert 0 < memory["pss_bytes"] < memory["rss_bytes"]
        assert pss(os.getpid()) > 1_000_000
    finally:
        child.kill()
        child.wait()
    assert pss(child.pid) == 0  # gone
    kernel = kernel_memory()
    assert kernel["slab"] > 0 and kernel["available"] > 0 and kernel["tcp_sockets"] >= 0


# --- storm's defaults are scorecast dev's (make run) ----------------------------------


def dev_parser() -> argparse.ArgumentParser:
    from scorecast.cli import build_parser

    return build_parser(environ={})


def test_storm_defaults_are_what_scorecast_dev_runs():
    from scorecast.publishers.settings import SimulatorSettings

    dev = dev_parser().parse_args(["dev"])
    storm = settings_from_args(add_arguments(argparse.ArgumentParser(), environ={}).parse_args([]))
    assert storm.urls == (f"ws://127.0.0.1:{dev.port}/ws",)
    assert dev.host == "127.0.0.1"
    assert storm.topics == dev.matches
    first = SimulatorSettings().first_id
    assert (storm.topic_prefix, storm.topic_first) == ("match.", first)
    assert storm.publish_rate == 0  # dev's simulator publishes; storm does not
    assert StormSettings().publish_rate == 0


def test_storm_with_only_the_url_runs_against_scorecast_dev(tmp_path):
    """What `make run` starts, on free ports (8080 may be taken on a shared
    machine): storm needs no flag but where the gateway is."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    dev = subprocess.Popen(
        [sys.executable, "-m", "scorecast.cli", "--log-level", "warning", "dev",
         "--port", "0", "--ingest-port", "0", "--minute-seconds", "0.1"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, start_new_session=True,
    )  # fmt: skip
    try:
        url = None
        while url is None:
            line = dev.stdout.readline().decode()
            assert line, "scorecast dev exited before printing its URLs"
            if match := re.search(r"(ws://[\d.:]+/ws)", line):
                url = match.group(1)
        result, log = storm(
            tmp_path, "--url", url, "--connections", "30", "--rate", "100", "--duration", "4",
            "--drain", "0.5",
        )  # fmt: skip
    finally:
        os.killpg(dev.pid, signal.SIGTERM)
        dev.wait(30)
    totals = result["totals"]
    assert "publishing nothing" in log
    assert totals["published"] == 0
    assert totals["peak_connections"] == 30 and totals["errors_total"] == 0
    assert totals["gaps"] == totals["duplicates"] == totals["backwards"] == 0
    assert totals["snapshots"] == 60  # two of dev's matches each
    assert totals["events"] > 0  # the simulator's


def test_a_storm_too_big_for_the_conntrack_table_is_refused_with_the_fix():
    from pathlib import Path

    from scorecast.loadtest.storm import conntrack_room

    huge = conntrack_room(10**9, reconnect=True)
    if not Path("/proc/sys/net/netfilter/nf_conntrack_max").exists():
        assert huge is None  # no connection tracking on this machine: nothing to fill
    else:
        assert "nf_conntrack_max=" in huge and "2,000,000,000 more" in huge
