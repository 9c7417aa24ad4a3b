"""CPU and memory of process trees, read from ``/proc`` (Linux).

A storm on one machine shares two cores between the gateways and the
generator, so the result records both: for each group of root processes
and all their descendants, CPU seconds used so far and resident memory now.
Processes that are gone are skipped. Sans-dependencies: plain file reads.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

__all__ = ["Machine", "ProcessGroup"]

_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


def _stat(pid: int) -> tuple[int, float] | None:
    """(parent pid, CPU seconds) of one process, or None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()  # the name may hold spaces
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / _TICKS


def _rss(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * _PAGE
    except (OSError, IndexError, ValueError):
        return 0


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
                cpu += stat[1]
                rss += _rss(pid)
        return {"cpu_seconds": cpu, "rss_bytes": rss, "processes": len(members), "at": at}


class Machine:
    """The whole machine, same sample shape: CPU seconds busy (all cores, from
    ``/proc/stat``) and memory in use (``MemTotal - MemAvailable``). Set beside
    the two groups, it shows how much of the machine other work took."""

    def sample(self) -> dict[str, float]:
        at = time.monotonic()
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
        user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, fields[:8])
        busy = (user + nice + system + irq + softirq + steal) / _TICKS
        memory = {}
        for line in Path("/proc/meminfo").read_text().splitlines():
            name, _, value = line.partition(":")
            memory[name] = int(value.split()[0]) * 1024
        used = memory.get("MemTotal", 0) - memory.get("MemAvailable", 0)
        return {"cpu_seconds": busy, "rss_bytes": float(used), "processes": 0, "at": at}
