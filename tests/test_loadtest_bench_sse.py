"""``python -m scorecast.loadtest.bench_sse`` runs end to end on a tiny load and writes
its figures (the numbers themselves are for people, not for asserts)."""

from __future__ import annotations

import subprocess
import sys

import orjson


def test_bench_sse_runs_and_reports(tmp_path):
    result = tmp_path / "sse.json"
    done = subprocess.run(
        [sys.executable, "-m", "scorecast.loadtest.bench_sse", "--connections", "20",
         "--events", "5", "--cold", "50", "--json", str(result)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    figures = orjson.loads(result.read_bytes())
    assert [f["transport"] for f in figures["transports"]] == ["ws", "sse"]
    for transport in figures["transports"]:
        assert transport["delivered"] == transport["expected"] == 100
    assert figures["coalescing"]["ok"] == 50
    assert figures["coalescing"]["jetstream_reads"] == 1
    assert "| sse |" in done.stdout
