"""A benchmark result as Markdown: one table per scenario with ratios, and the
issue's targets checked against the figures (reported, never asserted)."""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["ROWS", "check_targets", "render_markdown"]

# scenario -> (label, path into a server's figures, lower is better)
ROWS: dict[str, list[tuple[str, str, bool]]] = {
    "hot": [
        ("server CPU per delivery (us)", "cpu_us_per_delivery", True),
        ("server write() calls per delivery", "write_calls_per_delivery", True),
        ("server CPU per write() call (us)", "cpu_us_per_write_call", True),
        ("deliveries per second", "deliveries_per_second", False),
        ("latency p50 (ms)", "latency_p50_ms", True),
        ("latency p99 (ms)", "latency_p99_ms", True),
        ("latency max (ms)", "latency_max_ms", True),
        ("delivered", "delivered", False),
        ("lost", "lost", True),
        ("server memory per connection (KiB)", "rss_per_connection_kib", True),
        ("generator CPU per delivery (us)", "generator_cpu_us_per_delivery", True),
    ],
    "idle": [
        ("server memory per connection (KiB)", "rss_per_connection_kib", True),
        ("server memory before (MiB)", "rss_before_mib", True),
        ("server memory with clients (MiB)", "rss_after_mib", True),
        ("server CPU while idle (%)", "idle_cpu_percent", True),
        ("connections that failed", "open.failed", True),
    ],
    "storm": [
        ("connections per second", "connections_per_second", False),
        ("time to first snapshot p50 (ms)", "open.ready_p50_ms", True),
        ("time to first snapshot p99 (ms)", "open.ready_p99_ms", True),
        ("time to first snapshot max (ms)", "open.ready_max_ms", True),
        ("server CPU per connection (us)", "open_cpu_us_per_connection", True),
        ("generator CPU per connection (us)", "open_generator_cpu_us_per_connection", True),
        ("connections that failed", "open.failed", True),
    ],
}
ROWS["reconnect"] = [
    ("fresh: connections per second", "connections_per_second", False),
    ("fresh: time to first snapshot p99 (ms)", "open.ready_p99_ms", True),
    ("fresh: server CPU per connection (us)", "open_cpu_us_per_connection", True),
    ("resumed with since: connections per second", "resumed_connections_per_second", False),
    ("resumed: time to replayed p50 (ms)", "resumed.ready_p50_ms", True),
    ("resumed: time to replayed p99 (ms)", "resumed.ready_p99_ms", True),
    ("resumed: server CPU per connection (us)", "resumed_cpu_us_per_connection", True),
    ("resumed / fresh connections per second", "resumed_to_fresh", False),
    ("resumed: connections that failed", "resumed.failed", True),
]
ROWS["many"] = ROWS["hot"]
ROWS["hot"] = [
    *ROWS["many"],
    ("burst: server CPU per delivery (us)", "burst_cpu_us_per_delivery", True),
    ("burst: server write() calls per delivery", "burst_write_calls_per_delivery", True),
    ("burst: deliveries per second", "burst_deliveries_per_second", False),
    ("burst: latency p50 (ms)", "burst_latency_p50_ms", True),
    ("burst: latency p99 (ms)", "burst_latency_p99_ms", True),
    ("burst: lost", "burst_lost", True),
    ("burst: generator CPU per delivery (us)", "burst_generator_cpu_us_per_delivery", True),
]

TITLES = {
    "hot": "Hot match: every connection on one topic",
    "many": "Many matches: each connection on several topics, Zipf popularity",
    "idle": "Idle: subscribed connections, no events",
    "storm": "Storm: connections opened as fast as the server takes them",
    "reconnect": "Reconnect: all drop at once and come back with since, against fresh",
}
LABELS = {
    "scorecast": "scorecast",
    "floor": "floor (bare writes)",
    "nats": "nats-server WS",
    "naive": "naive websockets",
}


def _get(figures: dict | None, path: str):
    value = figures
    for key in path.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if abs(value) >= 100:
            return f"{value:,.0f}"
        return f"{value:.3g}" if abs(value) < 10 else f"{value:.1f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _ratio(a, b) -> str:
    if not isinstance(a, int | float) or not isinstance(b, int | float) or not b:
        return "-"
    return f"{a / b:.2f}x"


def _scenario_table(scenario: str, by_server: dict[str, dict], servers: list[str]) -> list[str]:
    ratios = [(other, f"scorecast / {LABELS[other]}") for other in servers if other != "scorecast"]
    ratios = ratios if "scorecast" in servers else []
    head = ["", *(LABELS[name] for name in servers), *(label for _, label in ratios)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, path, _ in ROWS[scenario]:
        values = [_get(by_server.get(name), path) for name in servers]
        cells = [label, *(_fmt(value) for value in values)]
        mine = _get(by_server.get("scorecast"), path)
        cells += [_ratio(mine, _get(by_server.get(other), path)) for other, _ in ratios]
        lines.append("| " + " | ".join(cells) + " |")
    for name in servers:
        error = _get(by_server.get(name), "error")
        if error:
            lines.append(f"\n{LABELS[name]} failed: `{error}`")
    return lines


def _target(text: str, measured, goal, met: Callable[[float, float], bool], unit: str = "") -> dict:
    if not isinstance(measured, int | float) or not isinstance(goal, int | float):
        return {"target": text, "measured": measured, "goal": goal, "met": None, "miss": None}
    ok = met(measured, goal)
    miss = None if ok or not goal else f"{measured / goal:.2f}x the goal"
    return {
        "target": text,
        "measured": f"{_fmt(measured)}{unit}",
        "goal": f"{_fmt(goal)}{unit}",
        "met": ok,
        "miss": miss,
    }


def check_targets(results: dict[str, dict[str, dict]]) -> list[dict]:
    """The issue's targets for scorecast, with what was measured."""
    targets = []
    hot = results.get("hot", {})
    mine, theirs = _get(hot.get("scorecast"), "cpu_us_per_delivery"), None
    if "nats" in hot:
        theirs = _get(hot["nats"], "cpu_us_per_delivery")
    if mine is not None:
        goal = 0.8 * theirs if isinstance(theirs, int | float) else None
        targets.append(
            _target(
                "hot match: server CPU per delivery <= 0.8x nats-server's",
                mine,
                goal,
                lambda m, g: m <= g,
                " us",
            )
        )
        lost = _get(hot.get("scorecast"), "lost")
        targets.append(_target("hot match: zero loss", lost, 0, lambda m, g: m == 0))
    many = _get(results.get("many", {}).get("scorecast"), "cpu_us_per_delivery")
    if many is not None:
        targets.append(
            _target(
                "many matches: server CPU per delivery <= 1.5 us",
                many,
                1.5,
                lambda m, g: m <= g,
                " us",
            )
        )
    idle = _get(results.get("idle", {}).get("scorecast"), "rss_per_connection_kib")
    if idle is not None:
        targets.append(
            _target(
                "idle: server memory per connection <= 8 KiB",
                idle,
                8.0,
                lambda m, g: m <= g,
                " KiB",
            )
        )
    targets += _floor_targets(results)
    resumed = _get(results.get("reconnect", {}).get("scorecast"), "resumed_to_fresh")
    if resumed is not None:
        targets.append(
            _target(
                "reconnect: resumed with since at >= 90 % of the fresh rate",
                resumed,
                0.9,
                lambda m, g: m >= g,
            )
        )
    storm = results.get("storm", {})
    rate = _get(storm.get("scorecast"), "connections_per_second")
    if rate is not None:
        theirs = _get(storm.get("nats"), "connections_per_second")
        targets.append(
            _target(
                "storm: connections per second >= nats-server's",
                rate,
                theirs,
                lambda m, g: m >= g,
                "/s",
            )
        )
    return targets


# scenario -> the most scorecast's CPU per delivery may be, as a multiple of the floor's
FLOOR_GOALS = {"hot": 1.2, "many": 1.3}
MEMORY_GOAL_KIB = 5.0


def _floor_targets(results: dict[str, dict[str, dict]]) -> list[dict]:
    """Issue 17's targets: ratios to the floor measured in the same run."""
    targets = []
    for scenario, factor in FLOOR_GOALS.items():
        by_server = results.get(scenario, {})
        if "scorecast" not in by_server or "floor" not in by_server:
            continue
        # per delivery as the issue words it; per write() call like for like, since a
        # server that falls behind joins frames into fewer writes and looks cheaper
        for path, what in (
            ("cpu_us_per_delivery", "delivery"),
            ("cpu_us_per_write_call", "write() call"),
        ):
            mine = _get(by_server["scorecast"], path)
            floor = _get(by_server["floor"], path)
            if mine is None:
                continue
            goal = round(factor * floor, 3) if isinstance(floor, int | float) else None
            targets.append(
                _target(
                    f"{scenario}: server CPU per {what} <= {factor}x the floor's",
                    mine,
                    goal,
                    lambda m, g: m <= g,
                    " us",
                )
            )
    for scenario in ("idle", "hot"):  # idle measures memory alone; hot if idle did not run
        memory = _get(results.get(scenario, {}).get("scorecast"), "rss_per_connection_kib")
        if memory is not None:
            targets.append(
                _target(
                    f"{scenario}: server memory per connection <= {MEMORY_GOAL_KIB:g} KiB",
                    memory,
                    MEMORY_GOAL_KIB,
                    lambda m, g: m <= g,
                    " KiB",
                )
            )
            break
    return targets


def render_markdown(report: dict) -> str:
    """The tables of a result as Markdown (without the prose around them)."""
    results = report["results"]
    servers = list(report["config"]["servers"])
    lines: list[str] = []
    for scenario in report["config"]["scenarios"]:
        if scenario not in results:
            continue
        size = report["config"]["sizes"].get(scenario)
        lines += [f"### {TITLES[scenario]} ({size:,} connections)", ""]
        lines += _scenario_table(scenario, results[scenario], servers)
        lines.append("")
    targets = report.get("targets") or []
    if targets:
        lines += [
            "### Targets (scorecast)",
            "",
            "| target | measured | goal | met |",
            "|---|---|---|---|",
        ]
        for target in targets:
            met = {True: "yes", False: f"no ({target['miss']})", None: "-"}[target["met"]]
            cells = [target["target"], _fmt(target["measured"]), _fmt(target["goal"]), met]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)
