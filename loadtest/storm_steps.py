"""The figures of a stepped storm (the cost curve) and of a mass reconnect.

Sans-I/O except :func:`memory_point`, which reads ``/proc``. The storm's
parent (:mod:`loadtest.storm`) takes a memory point before the first
connection (the baseline), at each step once it has held, and every few
seconds during the run; :func:`curve` turns the steps into the cost per
connection, :func:`reconnect_summary` turns the workers' ``reached`` and
``readmitted`` reports into the fresh-connect and re-admission rates.

Memory per connection is PSS (shared pages counted once) above the
baseline, divided by the connections held; ``marginal`` is the growth from
the previous step divided by the connections added, which leaves process
baselines out. The kernel's share is machine-wide (both ends of every
loopback connection, and whatever else the machine does): TCP buffer pages
from ``/proc/net/sockstat`` plus the slab caches that grow with sockets
(``/proc/slabinfo``; all of the slab from ``/proc/meminfo`` where that file
cannot be read).
"""

from __future__ import annotations

import time
from pathlib import Path

from scorecast.loadtest.procstat import ProcessGroup, kernel_memory

__all__ = ["curve", "memory_point", "reconnect_summary", "role_of"]

KIB = 1024


def role_of(pid: int) -> str:
    """``nats`` for a nats-server, ``gateway`` for anything else watched."""
    try:
        name = Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return "gateway"
    return "nats" if name.startswith("nats") else "gateway"


def memory_point(groups: dict[str, ProcessGroup], connections: int) -> dict:
    """PSS and RSS of each group, the kernel's figures, and the connections held."""
    point: dict = {"at": time.time(), "connections": connections}
    for name, group in groups.items():
        memory = group.memory()
        point[f"{name}_pss"] = memory["pss_bytes"]
        point[f"{name}_rss"] = memory["rss_bytes"]
        point[f"{name}_processes"] = memory["processes"]
    point.update(kernel_memory())
    return point


def _value(point: dict, role: str) -> int | None:
    """Bytes a role holds at a point: its PSS, or the kernel's TCP buffers + slab."""
    if role == "kernel":  # the socket caches when readable, else all of the slab
        slabs = point.get("socket_slabs", point.get("slab"))
        return None if slabs is None else point.get("tcp_buffers", 0) + slabs
    return point.get(f"{role}_pss")


def curve(baseline: dict, steps: list[dict], roles: tuple[str, ...]) -> list[dict]:
    """One row per step: for each role and the kernel the bytes held, KiB per
    connection above the baseline, and the marginal KiB per connection added
    since the previous step; the handshake rate; the goal's arrival."""
    rows = []
    previous = baseline
    for step in steps:
        memory = step.get("memory") or {}
        goal = step.get("goal") or {}
        held = memory.get("connections") or 0
        row: dict = {
            "step": step["step"],
            "connections": held,
            "reached": step.get("reached"),
            "seconds": step.get("seconds"),
            "handshakes_per_second": step.get("handshakes_per_second"),
            "goal_expected": goal.get("expected"),
            "goal_received": goal.get("received"),
            "goal_first_ms": goal.get("first_ms"),
            "goal_last_ms": goal.get("last_ms"),
            "available_gib": round(memory["available"] / 2**30, 2)
            if "available" in memory
            else None,
        }
        for role, value in (step.get("cpu_ms_per_handshake") or {}).items():
            row[f"{role}_cpu_ms_per_handshake"] = value
        for role, value in (step.get("holding_cores") or {}).items():
            row[f"{role}_holding_cores"] = value
        for role, value in (goal.get("cpu_us_per_delivery") or {}).items():
            row[f"{role}_cpu_us_per_goal_delivery"] = value
        added = held - (previous.get("connections") or 0)
        for role in (*roles, "kernel"):
            now, base, before = (_value(p, role) for p in (memory, baseline, previous))
            if now is None or base is None:
                continue
            row[f"{role}_mib"] = round(now / 2**20, 1)
            row[f"{role}_kib_per_connection"] = (
                round((now - base) / held / KIB, 2) if held else None
            )
            if before is not None and added > 0:
                row[f"{role}_marginal_kib"] = round((now - before) / added / KIB, 2)
        rows.append(row)
        if memory:
            previous = memory
    return rows


def reconnect_summary(
    t0: float,
    connections: int,
    rate: float,
    reached: list[dict],
    readmitted: list[dict],
    series: list[dict],
    reconnect_at: float,
    workers: int = 1,
) -> dict:
    """Fresh connections per second (the first ramp, t0 until every client was
    subscribed) beside re-admissions per second (the cut until every client
    was subscribed again), from the same run; ``readmit_after_cut_per_second``
    counts from the generator's first reconnect attempt instead, leaving out
    the time its processes took to get there (``cut_seconds``)."""
    summary: dict = {"connections": connections}
    if reached:
        ramp = max(message["at"] for message in reached) - t0
        summary["fresh_seconds"] = round(ramp, 2)
        summary["fresh_per_second"] = round(connections / ramp, 1) if ramp > 0 else None
        # a ramp that kept to --rate measured the schedule, not the gateway
        summary["fresh_limited_by_rate"] = connections / ramp > 0.9 * rate if ramp > 0 else None
    cut = sum(message["cut"] for message in readmitted)
    summary["cut"] = cut
    if readmitted:
        start = min(message["cut_at"] for message in readmitted)
        back = max(message["at"] for message in readmitted)
        summary["readmit_seconds"] = round(back - start, 2)
        summary["readmit_per_second"] = round(cut / (back - start), 1) if back > start else None
        if all("first_attempt_at" in message for message in readmitted):
            attempted = min(message["first_attempt_at"] for message in readmitted)
            summary["cut_seconds"] = round(attempted - start, 2)
            if back > attempted:
                summary["readmit_after_cut_per_second"] = round(cut / (back - attempted), 1)
    after = [row for row in series if row["t"] + 1 > reconnect_at]
    back = sum(row.get("reconnects", 0) for row in after)
    summary["back_in_run"] = back
    if len(readmitted) < workers or not readmitted:
        # not every worker saw all its clients back before the run ended: the
        # rate of those that were, from the cut to the last second one came back
        summary["cut"] = sum(row.get("forced_drops", 0) for row in series)
        summary["all_back"] = False
        summary.pop("readmit_after_cut_per_second", None)  # of some workers only
        last = max((row["t"] + 1 for row in after if row.get("reconnects")), default=None)
        if last is not None and last > reconnect_at:
            summary["readmit_seconds"] = round(last - reconnect_at, 1)
            summary["readmit_per_second"] = round(back / (last - reconnect_at), 1)
    else:
        summary["all_back"] = True
    fresh, again = summary.get("fresh_per_second"), summary.get("readmit_per_second")
    if fresh and again:
        summary["readmit_vs_fresh"] = round(again / fresh, 3)
    after_cut = summary.get("readmit_after_cut_per_second")
    if fresh and after_cut and summary["all_back"]:
        summary["readmit_after_cut_vs_fresh"] = round(after_cut / fresh, 3)
    # how fast the first half, 90 % and 99 % came back (per-second series)
    total, marks = 0, {}
    for row in series:
        if row["t"] + 1 < reconnect_at:
            continue
        total += row.get("reconnects", 0)
        for share in (0.5, 0.9, 0.99):
            if share not in marks and summary["cut"] and total >= share * summary["cut"]:
                marks[share] = round(row["t"] + 1 - reconnect_at, 1)
    summary["seconds_to_back"] = {f"{int(share * 100)}%": at for share, at in marks.items()}
    return summary
