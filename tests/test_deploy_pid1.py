"""The gateway's supervisor as PID 1, as in a container (`docker run IMAGE
gateway --workers 2`): its workers must serve, not take "my parent is PID 1"
for "my parent died" and kill themselves in a loop. A PID namespace of its
own (`unshare --pid --fork --mount-proc`, root only) gives the supervisor
PID 1 without a container engine; `make test-stack` checks the same in real
containers. Fails on the old worker (getppid() == 1 meant "orphaned")."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request

import pytest

from scorecast.natsserver import free_port

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("unshare") is None,
    reason="a PID namespace needs root and unshare(1)",
)


def ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as answer:
            return answer.status == 200
    except OSError:
        return False


def parent_of(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return int(stat.read().rsplit(")", 1)[1].split()[1])
    except OSError:
        return None


def children_of_pid1(supervisor: int) -> set[int]:
    """The workers: processes whose parent is the supervisor (PID 1 inside)."""
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    fields = stat.read().rsplit(")", 1)[1].split()
                with open(f"/proc/{entry}/cmdline", "rb") as cmdline:
                    command = cmdline.read()
            except OSError:
                continue
            if int(fields[1]) == supervisor and b"spawn_main" in command:
                found.add(int(entry))
    return found


def test_two_workers_serve_under_a_pid1_supervisor(nats_server, tmp_path):
    port = free_port()
    command = [
        "unshare", "--pid", "--fork", "--mount-proc",
        sys.executable, "-m", "scorecast.cli", "--log-level", "warning", "gateway",
        "--workers", "2", "--port", str(port), "--nats", nats_server.url,
    ]  # fmt: skip
    log = (tmp_path / "gateway.log").open("wb")
    unshare = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    supervisor = None
    try:
        deadline = time.monotonic() + 30
        while not ready(port) and time.monotonic() < deadline and unshare.poll() is None:
            time.sleep(0.2)
        assert ready(port), (tmp_path / "gateway.log").read_text()[-2000:]
        # unshare's child is the supervisor: PID 1 in its namespace
        supervisor = next(
            pid for pid in map(int, filter(str.isdigit, os.listdir("/proc")))
            if parent_of(pid) == unshare.pid
        )  # fmt: skip
        with open(f"/proc/{supervisor}/status") as status:
            nspid = next(line for line in status if line.startswith("NSpid:")).split()
        assert nspid[-1] == "1", f"the supervisor is not PID 1 in its namespace: {nspid}"
        workers = children_of_pid1(supervisor)
        assert len(workers) == 2, workers
        time.sleep(3)  # a worker killing itself would be restarted within this
        assert children_of_pid1(supervisor) == workers, "workers died and were restarted"
        assert ready(port)
        assert "restarting" not in (tmp_path / "gateway.log").read_text()
    finally:
        # unshare(1) does not pass signals on: stop the supervisor itself
        os.kill(supervisor or unshare.pid, signal.SIGINT)
        try:
            unshare.wait(20)
        except subprocess.TimeoutExpired:
            unshare.kill()
            unshare.wait()
        log.close()
