"""CPU time and memory of a process and its descendants, read from /proc.

A server under test may be one process (nats-server, the naive server) or a
supervisor with worker processes (``scorecast gateway --workers N``), so every
figure is summed over the process tree: ``utime + stime`` from
``/proc/PID/stat``, ``VmRSS`` from ``/proc/PID/status`` and write system
calls from ``/proc/PID/io``. Linux only.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

__all__ = ["CpuTimes", "ProcessTree", "machine"]

_TICK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True, slots=True)
class CpuTimes:
    user: float
    system: float

    @property
    def total(self) -> float:
        return self.user + self.system

    def __sub__(self, other: CpuTimes) -> CpuTimes:
        return CpuTimes(self.user - other.user, self.system - other.system)


def _stat(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:  # gone
        return None
    return text[text.rindex(")") + 2 :].split()  # the name may hold spaces


def _parents() -> dict[int, int]:
    """pid -> parent pid of every process (no /proc/PID/task/*/children here)."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat(int(entry.name))
            if fields is not None:
                parents[int(entry.name)] = int(fields[1])
    return parents


class ProcessTree:
    """A root pid and, at each reading, its live descendants."""

    def __init__(self, pid: int) -> None:
        self.pid = pid

    def pids(self) -> list[int]:
        children: dict[int, list[int]] = {}
        for pid, parent in _parents().items():
            children.setdefault(parent, []).append(pid)
        pids, pending = [], [self.pid]
        while pending:
            pid = pending.pop()
            pids.append(pid)
            pending.extend(children.get(pid, ()))
        return pids

    def cpu(self) -> CpuTimes:
        user = system = 0
        for pid in self.pids():
            fields = _stat(pid)
            if fields is not None:  # state ppid ... utime(11) stime(12)
                user += int(fields[11])
                system += int(fields[12])
        return CpuTimes(user / _TICK, system / _TICK)

    def write_calls(self) -> int:
        """``write``/``writev`` system calls so far (``syscw`` of ``/proc/PID/io``),
        summed over the tree: how many socket writes the server made, whatever
        its language (libuv and Go write to stream sockets with these)."""
        total = 0
        for pid in self.pids():
            try:
                text = Path(f"/proc/{pid}/io").read_text()
            except OSError:
                continue
            for line in text.splitlines():
                if line.startswith("syscw:"):
                    total += int(line.split()[1])
                    break
        return total

    def rss(self) -> int:
        """Resident memory in bytes, summed over the tree."""
        total = 0
        for pid in self.pids():
            try:
                status = Path(f"/proc/{pid}/status").read_text()
            except OSError:
                continue
            for line in status.splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
                    break
        return total


def machine() -> dict:
    """What the benchmark ran on: cores, CPU model, memory, kernel."""
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory = int(line.split()[1]) * 1024
                break
    except OSError:
        pass
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "memory_gib": round(memory / 2**30, 1),
        "kernel": os.uname().release,
    }
