"""CPU and memory of process trees, read from ``/proc`` (Linux): the one
process monitor of ``scorecast storm``, ``scorecast bench`` and the faults suite.

A storm on one machine shares two cores between the gateways and the
generator, so the result records both: for each group of root processes
and all their descendants, CPU seconds used so far and resident memory now.
A server under test may be one process or a supervisor with workers
(``scorecast gateway --workers N``), so the bench sums over the tree too
(:meth:`ProcessGroup.cpu`, :meth:`ProcessGroup.rss`,
:meth:`ProcessGroup.write_calls`). Processes that are gone are skipped.
Sans-dependencies: plain file reads.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["CpuTimes", "Machine", "ProcessGroup", "machine", "resident_bytes"]

_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


def _stat(pid: int) -> tuple[int, float, float] | None:
    """(parent pid, user CPU seconds, system CPU seconds) of one process, or
    None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()  # the name may hold spaces
    return int(fields[1]), int(fields[11]) / _TICKS, int(fields[12]) / _TICKS


def resident_bytes(pid: int) -> int:
    """Resident memory of one process (``/proc/PID/statm``); 0 when it is gone."""
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * _PAGE
    except (OSError, IndexError, ValueError):
        return 0


@dataclass(frozen=True, slots=True)
class CpuTimes:
    user: float
    system: float

    @property
    def total(self) -> float:
        return self.user + self.system

    def __sub__(self, other: CpuTimes) -> CpuTimes:
        return CpuTimes(self.user - other.user, self.system - other.system)


def _meminfo() -> dict[str, int]:
    """``/proc/meminfo`` in bytes."""
    memory = {}
    for line in Path("/proc/meminfo").read_text().splitlines():
        name, _, value = line.partition(":")
        memory[name] = int(value.split()[0]) * 1024
    return memory


class ProcessGroup:
    """Root processes and their descendants, found afresh at each sample."""

    def __init__(self, roots: list[int]) -> None:
        self.roots = set(roots)

    def members(self) -> set[int]:
        parents: dict[int, int] = {}
        for entry in os.scandir("/proc"):
            if entry.name.isdigit():
                stat = _stat(int(entry.name))
                if stat is not None:
                    parents[int(entry.name)] = stat[0]
        members = {pid for pid in self.roots if pid in parents}
        grew = True
        while grew:
            more = {pid for pid, parent in parents.items() if parent in members} - members
            grew = bool(more)
            members |= more
        return members

    def sample(self) -> dict[str, float]:
        """CPU seconds used by the live members so far, their resident bytes, and
        when (monotonic seconds), so that CPU use is a rate over real elapsed time."""
        at = time.monotonic()
        cpu = rss = 0.0
        members = self.members()
        for pid in members:
            stat = _stat(pid)
            if stat is not None:
                cpu += stat[1] + stat[2]
                rss += resident_bytes(pid)
        return {"cpu_seconds": cpu, "rss_bytes": rss, "processes": len(members), "at": at}

    def cpu(self) -> CpuTimes:
        """User and system CPU seconds of the live members so far."""
        user = system = 0.0
        for pid in self.members():
            stat = _stat(pid)
            if stat is not None:
                user += stat[1]
                system += stat[2]
        return CpuTimes(user, system)

    def rss(self) -> int:
        """Resident bytes of the live members now."""
        return sum(resident_bytes(pid) for pid in self.members())

    def write_calls(self) -> int:
        """``write``/``writev`` system calls so far (``syscw`` of ``/proc/PID/io``),
        summed over the members: how many socket writes a server made, whatever
        its language (libuv and Go write to stream sockets with these)."""
        total = 0
        for pid in self.members():
            try:
                text = Path(f"/proc/{pid}/io").read_text()
            except OSError:
                continue
            for line in text.splitlines():
                if line.startswith("syscw:"):
                    total += int(line.split()[1])
                    break
        return total


class Machine:
    """The whole machine, same sample shape: CPU seconds busy (all cores, from
    ``/proc/stat``) and memory in use (``MemTotal - MemAvailable``). Set beside
    the two groups, it shows how much of the machine other work took."""

    def sample(self) -> dict[str, float]:
        at = time.monotonic()
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
        user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, fields[:8])
        busy = (user + nice + system + irq + softirq + steal) / _TICKS
        memory = _meminfo()
        used = memory.get("MemTotal", 0) - memory.get("MemAvailable", 0)
        return {"cpu_seconds": busy, "rss_bytes": float(used), "processes": 0, "at": at}


def machine() -> dict:
    """What a benchmark ran on: cores, CPU model, memory, kernel."""
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        memory = _meminfo().get("MemTotal", 0)
    except (OSError, ValueError, IndexError):
        memory = 0
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "memory_gib": round(memory / 2**30, 1),
        "kernel": os.uname().release,
    }
