"""CPU and memory of process trees and of the machine, as the storm records them."""

from __future__ import annotations

import os
import subprocess
import sys

from scorecast.loadtest.procstat import Machine, ProcessGroup
from scorecast.loadtest.results import StormResults


def test_a_group_counts_its_children():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        group = ProcessGroup([os.getpid()])
        assert child.pid in group.members()
        sample = group.sample()
        assert sample["processes"] >= 2
        assert sample["cpu_seconds"] > 0 and sample["rss_bytes"] > 1_000_000
        assert ProcessGroup([child.pid]).members() == {child.pid}
    finally:
        child.kill()
        child.wait()
    assert ProcessGroup([child.pid]).sample()["processes"] == 0  # gone: skipped


def test_machine_sample_and_cores_per_second():
    first = Machine().sample()
    assert first["cpu_seconds"] > 0 and first["rss_bytes"] > 0
    results = StormResults(connections=1, workers=1)
    results.add_processes(0, "server", {"cpu_seconds": 10.0, "rss_bytes": 2**20, "at": 100.0})
    results.add_processes(1, "server", {"cpu_seconds": 11.0, "rss_bytes": 2**21, "at": 102.0})
    row = results.row(1)
    assert row["server_cpu_cores"] == 0.5  # one CPU second over two real seconds
    assert row["server_rss_mib"] == 2.0
    assert "server_cpu_cores" not in results.row(0)  # no earlier sample to diff against
