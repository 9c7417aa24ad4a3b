"""``scorecast report RESULT.json``: an HTML page with plots of a storm.

Plots from the result's per-second series: connections, delivery latency
percentiles, messages per second, errors, and (when the storm watched them)
CPU and memory of the server and generator processes; from the memory points
(every few seconds), PSS of the gateway, nats-server and generator and the
kernel's socket memory over time; and for a stepped storm (``--steps``) the
cost curve: memory per connection, handshake rate and the time for one goal
to reach every client, against the connections held. Matplotlib draws them with
the Agg backend (no display needed); the PNGs are embedded in the page as
base64, so the HTML file stands alone. ``--png`` also writes them beside it.
"""

from __future__ import annotations

import argparse
import base64
import html
import io
import json
import sys
from pathlib import Path

__all__ = ["main", "plots", "render_html"]

ERROR_KINDS = ("connect_failures", "drops", "gaps", "duplicates", "backwards", "no_snapshot",
               "error_frames")  # fmt: skip


class ReportError(ValueError):
    """The input is not a storm result."""


def load(path: str | Path) -> dict:
    try:
        result = json.loads(Path(path).read_text())
    except OSError as error:
        raise ReportError(f"cannot read {path}: {error.strerror}") from None
    except json.JSONDecodeError as error:
        raise ReportError(f"{path} is not JSON: {error}") from None
    if not isinstance(result, dict) or "series" not in result or "totals" not in result:
        raise ReportError(f"{path} is not a storm result (no 'series' or 'totals')")
    return result


def _column(series: list[dict], key: str) -> list[float]:
    return [float("nan") if row.get(key) is None else row[key] for row in series]


def _pyplot():
    """Matplotlib on the Agg backend, imported only when drawing (it is heavy,
    and ``scorecast`` builds this command's parser on every start)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _mark_events(axes, result: dict) -> None:
    settings = result.get("settings", {})
    at = settings.get("reconnect_at")
    if at is not None:
        axes.axvline(at, color="grey", linestyle="--", linewidth=1)
        axes.text(at, 1.0, " mass reconnect", transform=axes.get_xaxis_transform(),
                  va="top", fontsize=8, color="grey")  # fmt: skip
    duration = settings.get("duration")
    if duration and not settings.get("steps"):  # with steps, only the longest it may take
        axes.axvline(duration, color="grey", linestyle=":", linewidth=1)
    t0 = result.get("t0")
    for point in (result.get("steps") or {}).get("points") or []:
        goal = point.get("goal") or {}
        if t0 and goal.get("published_at"):  # each step's goal
            axes.axvline(goal["published_at"] - t0, color="tab:red", linestyle=":", linewidth=0.8)


def _png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.tight_layout()
    figure.savefig(buffer, format="png", dpi=100)
    _pyplot().close(figure)
    return buffer.getvalue()


def plots(result: dict) -> dict[str, bytes]:
    """Plot name -> PNG bytes."""
    plt = _pyplot()
    from matplotlib.ticker import ScalarFormatter

    series = result["series"]
    t = [row["t"] + 1 for row in series]
    out: dict[str, bytes] = {}

    figure, axes = plt.subplots(figsize=(9, 3.6))
    axes.plot(t, _column(series, "connections"), label="client: subscribed connections")
    if any(row.get("gateway_connections") is not None for row in series):
        axes.plot(t, _column(series, "gateway_connections"), label="gateway: open connections",
                  linestyle="--")  # fmt: skip
    axes.plot(t, _column(series, "pending"), label="client: attempts in flight", alpha=0.7)
    axes.axhline(result["totals"]["connections_target"], color="black", linewidth=0.5)
    axes.set(title="Connections", xlabel="seconds", ylabel="connections")
    _mark_events(axes, result)
    axes.legend(loc="lower right", fontsize=8)
    out["connections"] = _png(figure)

    figure, axes = plt.subplots(figsize=(9, 3.6))
    for key, label in (("delivery_p50_ms", "p50"), ("delivery_p90_ms", "p90"),
                       ("delivery_p99_ms", "p99"), ("delivery_max_ms", "max")):  # fmt: skip
        axes.plot(t, _column(series, key), label=label)
    axes.set_yscale("log")
    axes.yaxis.set_major_formatter(ScalarFormatter())
    axes.set(title="Delivery latency, publish to receive (per second)", xlabel="seconds",
             ylabel="ms")  # fmt: skip
    _mark_events(axes, result)
    axes.legend(loc="upper right", fontsize=8)
    out["latency"] = _png(figure)

    figure, axes = plt.subplots(figsize=(9, 3.6))
    axes.plot(t, _column(series, "msgs"), label="events received / s")
    if any(row.get("catch_up") for row in series):
        axes.plot(t, _column(series, "catch_up"), label="of which catch-up / s", alpha=0.7)
    axes.set(title="Messages per second", xlabel="seconds", ylabel="events received / s")
    right = axes.twinx()
    right.plot(t, _column(series, "published"), color="tab:orange", label="published / s")
    right.plot(t, _column(series, "opened"), color="tab:green", label="handshakes / s")
    right.set_ylabel("published / s, handshakes / s")
    lines = axes.get_legend_handles_labels()
    more = right.get_legend_handles_labels()
    axes.legend(lines[0] + more[0], lines[1] + more[1], loc="upper left", fontsize=8)
    _mark_events(axes, result)
    out["messages"] = _png(figure)

    figure, axes = plt.subplots(figsize=(9, 3.6))
    bottom = [0.0] * len(series)
    for kind in ERROR_KINDS:
        values = [row.get(kind, 0) for row in series]
        if any(values):
            axes.bar(t, values, bottom=bottom, label=kind, width=1.0)
            bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    axes.set(title="Errors per second", xlabel="seconds", ylabel="count")
    if not any(bottom):
        axes.text(0.5, 0.5, "no errors", transform=axes.transAxes, ha="center", va="center")
        axes.set_ylim(0, 1)
    else:
        axes.legend(loc="upper right", fontsize=8)
    _mark_events(axes, result)
    out["errors"] = _png(figure)

    groups = [
        g for g in ("machine", "server", "generator") if any(f"{g}_rss_mib" in r for r in series)
    ]
    if groups:
        figure, axes = plt.subplots(figsize=(9, 3.6))
        right = axes.twinx()
        for group in groups:
            axes.plot(t, _column(series, f"{group}_cpu_cores"), label=f"{group} CPU (cores)")
            memory = [v / 1024 for v in _column(series, f"{group}_rss_mib")]
            right.plot(t, memory, linestyle="--", label=f"{group} memory (GiB)")
        axes.set(title="CPU and memory (machine: everything running, other work too)",
                 xlabel="seconds",
                 ylabel="CPU cores in use")  # fmt: skip
        right.set_ylabel("resident memory, GiB")
        lines, more = axes.get_legend_handles_labels(), right.get_legend_handles_labels()
        axes.legend(lines[0] + more[0], lines[1] + more[1], loc="upper left", fontsize=8)
        _mark_events(axes, result)
        out["resources"] = _png(figure)
    points = (result.get("memory") or {}).get("points") or []
    baseline = (result.get("memory") or {}).get("baseline") or {}
    if points and baseline.get("at"):
        out["memory"] = _memory_plot(plt, result, points, baseline)
    rows = (result.get("steps") or {}).get("curve") or []
    if rows:
        out.update(_curve_plots(plt, rows))
    return out


ROLES = (
    ("gateway", "gateway (PSS)"),
    ("nats", "nats-server (PSS)"),
    ("generator", "generator (PSS)"),
    ("kernel", "kernel: TCP buffers + socket slab caches"),
)


def _memory_plot(plt, result: dict, points: list[dict], baseline: dict) -> bytes:
    """PSS of each role and the kernel's socket memory over the run, GiB."""
    start = result.get("t0") or baseline["at"]
    t = [point["at"] - start for point in points]
    figure, axes = plt.subplots(figsize=(9, 3.6))
    for role, label in ROLES:
        if role == "kernel":
            key = "socket_slabs" if "socket_slabs" in baseline else "slab"
            values = [(p.get("tcp_buffers", 0) + p.get(key, 0) - baseline.get(key, 0))
                      / 2**30 for p in points]  # fmt: skip
        elif f"{role}_pss" in points[0]:
            values = [p.get(f"{role}_pss", 0) / 2**30 for p in points]
        else:
            continue
        axes.plot(t, values, label=label)
    right = axes.twinx()
    right.plot(t, [p.get("connections", 0) for p in points], color="grey", linestyle=":",
               label="subscribed connections")  # fmt: skip
    right.set_ylabel("connections")
    axes.set(title="Memory (PSS: shared pages counted once; kernel: machine-wide)",
             xlabel="seconds", ylabel="GiB")  # fmt: skip
    lines, more = axes.get_legend_handles_labels(), right.get_legend_handles_labels()
    axes.legend(lines[0] + more[0], lines[1] + more[1], loc="upper left", fontsize=8,
                framealpha=0.6)  # fmt: skip
    axes.set_ylim(bottom=0)
    _mark_events(axes, result)
    return _png(figure)


def _steps_axis(axes, x: list[int]) -> None:
    axes.set_xscale("log")
    axes.set_xticks(x, [f"{v:,}" for v in x])
    axes.minorticks_off()


def _curve_plots(plt, rows: list[dict]) -> dict[str, bytes]:
    """The cost curve: memory per connection, handshakes per second, goal time."""
    x = [row["connections"] or row["step"] for row in rows]
    out: dict[str, bytes] = {}
    figure, axes = plt.subplots(figsize=(9, 3.6))
    for role, label in ROLES:
        if f"{role}_kib_per_connection" in rows[0]:
            axes.plot(x, _column(rows, f"{role}_kib_per_connection"), marker="o", label=label)
    _steps_axis(axes, x)
    axes.set(title="Memory per connection (above the baseline with no connections)",
             xlabel="subscribed connections", ylabel="KiB per connection")  # fmt: skip
    axes.set_ylim(bottom=0)
    axes.legend(loc="upper right", fontsize=8)
    out["curve-memory"] = _png(figure)

    figure, axes = plt.subplots(figsize=(9, 3.6))
    seconds = [v / 1000 for v in _column(rows, "goal_last_ms")]  # nan where none arrived
    axes.plot(x, seconds, marker="o", color="tab:red",
              label="goal: publish to the last client (s)")  # fmt: skip
    _steps_axis(axes, x)
    axes.set(title="Cost curve: one goal to every client, and the handshake rate",
             xlabel="subscribed connections", ylabel="seconds")  # fmt: skip
    axes.set_ylim(bottom=0)
    right = axes.twinx()
    right.plot(x, _column(rows, "handshakes_per_second"), marker="s", color="tab:green",
               label="handshakes / s reaching the step")  # fmt: skip
    right.set_ylabel("handshakes / s")
    right.set_ylim(bottom=0)
    lines, more = axes.get_legend_handles_labels(), right.get_legend_handles_labels()
    axes.legend(lines[0] + more[0], lines[1] + more[1], loc="upper left", fontsize=8)
    out["curve-time"] = _png(figure)
    return out


def _table(rows: list[tuple[str, object]]) -> str:
    cells = "".join(
        f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(_fmt(v))}</td></tr>" for k, v in rows
    )
    return f"<table>{cells}</table>"


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:,.3f}".rstrip("0").rstrip(".")
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, dict | list):
        return json.dumps(value)
    return "-" if value is None else str(value)


def render_html(result: dict, images: dict[str, bytes], title: str) -> str:
    totals, latency = result["totals"], result["latency"]
    summary = [
        ("connections (target / peak)",
         f"{totals['connections_target']:,} / {totals['peak_connections']:,}"),
        ("seconds to reach the target", totals.get("seconds_to_target")),
        ("events received", totals["events"]),
        ("events published", totals.get("published")),
        ("errors (all kinds)", totals["errors_total"]),
        ("gaps / duplicates / backwards",
         f"{totals['gaps']} / {totals['duplicates']} / {totals['backwards']}"),
        ("drops / connect failures", f"{totals['drops']} / {totals['connect_failures']}"),
        ("reconnects (forced drops)", f"{totals['reconnects']} ({totals['forced_drops']})"),
        ("error reasons", totals.get("errors") or "none"),
    ]  # fmt: skip
    latency_rows = "".join(
        f"<tr><th>{html.escape(name)}</th>"
        + "".join(f"<td>{_fmt(figures.get(k))}</td>" for k in
                  ("count", "p50_ms", "p90_ms", "p99_ms", "p99.9_ms", "max_ms"))
        + "</tr>"
        for name, figures in latency.items()
    )  # fmt: skip
    sections = [
        f"<h1>{html.escape(title)}</h1>",
        f"<p>Started {html.escape(str(result.get('started_at')))} on "
        f"{html.escape(_fmt(result.get('machine')))}</p>",
        "<h2>Summary</h2>",
        _table(summary),
        "<h2>Latency (ms)</h2>",
        "<table><tr><th></th><th>count</th><th>p50</th><th>p90</th><th>p99</th>"
        f"<th>p99.9</th><th>max</th></tr>{latency_rows}</table>",
    ]
    rows = (result.get("steps") or {}).get("curve") or []
    if rows:
        keys = [k for k in rows[0] if k != "step"]
        head = "".join(f"<th>{html.escape(k)}</th>" for k in ("step", *keys))
        body = "".join(
            "<tr>"
            + "".join(f"<td>{html.escape(_fmt(row.get(k)))}</td>" for k in ("step", *keys))
            + "</tr>"
            for row in rows
        )
        table = f"<div style='overflow-x:auto'><table><tr>{head}</tr>{body}</table></div>"
        sections += ["<h2>Cost curve</h2>", table]
    if result.get("reconnect"):
        sections += ["<h2>Mass reconnect</h2>", _table(sorted(result["reconnect"].items()))]
    for name, data in images.items():
        encoded = base64.b64encode(data).decode()
        sections.append(f'<h2>{name.title()}</h2><img alt="{name}" '
                        f'src="data:image/png;base64,{encoded}">')  # fmt: skip
    if result.get("gateway"):
        sections += ["<h2>Gateway counters over the run</h2>",
                     _table(sorted(result["gateway"].items()))]  # fmt: skip
    if result.get("workers"):
        sections += [
            "<h2>Generator processes</h2>",
            _table([(f"worker {w['worker']}", w) for w in result["workers"]]),
        ]
    if result.get("failures"):
        sections += [
            "<h2>Failures</h2>",
            _table([(str(i), f) for i, f in enumerate(result["failures"])]),
        ]
    sections += ["<h2>Settings</h2>", _table(sorted(result.get("settings", {}).items()))]
    style = (
        "body{font-family:sans-serif;max-width:960px;margin:2em auto;color:#222}"
        "table{border-collapse:collapse;margin:1em 0}th,td{border:1px solid #ccc;"
        "padding:3px 8px;text-align:left;font-size:14px}img{max-width:100%}"
    )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}"
        f"</title><style>{style}</style></head><body>{''.join(sections)}</body></html>"
    )


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("result", help="JSON result written by scorecast storm")
    parser.add_argument(
        "--output", "-o", default=None, help="HTML file (default: the result's name with .html)"
    )
    parser.add_argument(
        "--png",
        action="store_true",
        help="also write the plots as PNG files beside the HTML (NAME-connections.png, ...)",
    )
    parser.add_argument("--title", default=None, help="page title")
    return parser  # fmt: skip


def main(args: argparse.Namespace | list[str] | None = None) -> int:
    if not isinstance(args, argparse.Namespace):
        parser = argparse.ArgumentParser(prog="scorecast report", description=__doc__)
        args = add_arguments(parser).parse_args(args)
    try:
        result = load(args.result)
    except ReportError as error:
        print(f"scorecast report: {error}", file=sys.stderr)
        return 2
    output = Path(args.output or Path(args.result).with_suffix(".html"))
    images = plots(result)
    title = args.title or f"scorecast storm: {result['totals']['connections_target']:,} connections"
    output.write_text(render_html(result, images, title))
    if args.png:
        for name, data in images.items():
            output.with_name(f"{output.stem}-{name}.png").write_bytes(data)
    print(f"report written to {output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
