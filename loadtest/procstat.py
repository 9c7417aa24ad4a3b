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

Resident memory double-counts what processes share (a forked or spawned
worker's interpreter pages, copy-on-write data): :meth:`ProcessGroup.memory`
also sums PSS from ``/proc/PID/smaps_rollup``, where a page shared by ``n``
processes counts ``1/n`` in each, so a group's PSS counts it once. PSS walks
the page tables, so it is read at the storm's measuring points, not every
second. :func:`kernel_memory` is the kernel's side: TCP buffer pages from
``/proc/net/sockstat``, the slab caches from ``/proc/meminfo``, and those
that grow with sockets (sockets, inodes, files, epoll items, conntrack
entries) from ``/proc/slabinfo``, which other work on the machine moves less.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "CpuTimes",
    "Machine",
    "ProcessGroup",
    "kernel_memory",
    "machine",
    "meminfo",
    "pss",
    "resident_bytes",
]

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


def pss(pid: int) -> int:
    """Proportional set size of one process in bytes (0 when it is gone or the
    kernel has no smaps_rollup)."""
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return 0
    for line in text.splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) * 1024
    return 0


def meminfo() -> dict[str, int]:
    """``/proc/meminfo`` in bytes (name -> value)."""
    memory: dict[str, int] = {}
    for line in Path("/proc/meminfo").read_text().splitlines():
        name, _, value = line.partition(":")
        parts = value.split()
        if parts:
            memory[name] = int(parts[0]) * (1024 if len(parts) > 1 else 1)
    return memory


# the slab caches that grow with each TCP connection (both ends of a loopback
# one): the socket, its inode, file, dentry and epoll item, the conntrack entry
SOCKET_SLABS = ("TCP", "sock_inode_cache", "filp", "dentry", "eventpoll_epi", "nf_conntrack",
                "skbuff_head_cache", "request_sock_TCP", "tw_sock_TCP")  # fmt: skip


def socket_slabs() -> dict[str, int]:
    """Bytes held by each of :data:`SOCKET_SLABS` (its slabs' pages), from
    ``/proc/slabinfo`` (readable by root only: empty otherwise)."""
    sizes: dict[str, int] = {}
    try:
        lines = Path("/proc/slabinfo").read_text().splitlines()[2:]
    except OSError:
        return sizes
    for line in lines:
        fields = line.split()
        if fields and fields[0] in SOCKET_SLABS:
            # name active num objsize perslab pagesperslab : tunables ... : slabdata active num
            sizes[fields[0]] = int(fields[-2]) * int(fields[5]) * _PAGE
    return sizes


def kernel_memory() -> dict[str, int]:
    """The kernel's memory that grows with connections, machine-wide, bytes:
    ``tcp_buffers`` (sockstat ``TCP ... mem``, pages of queued data),
    ``tcp_sockets`` (sockstat ``inuse``, a count), ``slab`` and
    ``slab_unreclaimable`` (meminfo), and ``available`` (MemAvailable)."""
    figures = {"tcp_buffers": 0, "tcp_sockets": 0}
    try:
        for line in Path("/proc/net/sockstat").read_text().splitlines():
            if line.startswith("TCP:"):
                fields = line.split()[1:]
                values = dict(zip(fields[::2], fields[1::2], strict=False))
                figures["tcp_buffers"] = int(values.get("mem", 0)) * _PAGE
                figures["tcp_sockets"] = int(values.get("inuse", 0))
    except OSError:
        pass
    memory = meminfo()
    figures["slab"] = memory.get("Slab", 0)
    figures["slab_unreclaimable"] = memory.get("SUnreclaim", 0)
    figures["available"] = memory.get("MemAvailable", 0)
    slabs = socket_slabs()
    if slabs:
        figures["socket_slabs"] = sum(slabs.values())
        figures.update({f"slab_{name}": size for name, size in slabs.items()})
    return figures


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

    def memory(self) -> dict[str, int]:
        """PSS and RSS of the live members now, bytes, and how many there are."""
        members = self.members()
        return {
            "pss_bytes": sum(pss(pid) for pid in members),
            "rss_bytes": sum(resident_bytes(pid) for pid in members),
            "processes": len(members),
        }

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
        memory = meminfo()
        used = memory.get("MemTotal", 0) - memory.get("MemAvailable", 0)
        return {
            "cpu_seconds": busy,
            "rss_bytes": float(used),
            "available_bytes": float(memory.get("MemAvailable", 0)),
            "processes": 0,
            "at": at,
        }


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
        memory = meminfo().get("MemTotal", 0)
    except (OSError, ValueError, IndexError):
        memory = 0
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "memory_gib": round(memory / 2**30, 1),
        "kernel": os.uname().release,
    }
