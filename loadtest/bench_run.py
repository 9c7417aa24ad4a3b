"""One ``scorecast bench`` run: the backbone, the generator fleet, and every
scenario against every server, each on a fresh server process. All processes
started here are ended before :func:`run` returns, whatever happened."""

from __future__ import annotations

import datetime
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import nats

from scorecast.loadtest.bench_config import BenchConfig, fleet_size
from scorecast.loadtest.bench_fleet import Fleet
from scorecast.loadtest.bench_publish import BenchPublisher
from scorecast.loadtest.bench_report import check_targets
from scorecast.loadtest.bench_scenarios import RUNNERS, BenchContext
from scorecast.loadtest.bench_servers import SERVERS, Backbone
from scorecast.loadtest.client import raise_file_limit
from scorecast.loadtest.procstat import machine
from scorecast.loadtest.stack import checkout_revision
from scorecast.publishers.stream import ensure_stream

__all__ = ["fleet_size", "run"]


async def run(config: BenchConfig, *, progress: Callable[[str], None] = lambda line: None) -> dict:
    """Run every scenario against every server; the result as a dict (JSON-ready)."""
    raise_file_limit()  # servers and generators inherit the soft limit
    workdir = Path(tempfile.mkdtemp(prefix="scorecast-bench-"))
    (workdir / "js").mkdir()
    backbone = Backbone(
        store_dir=str(workdir / "js"),
        binary=config.nats_server_bin,
        log_file=str(workdir / "backbone.log"),
    )
    results: dict[str, dict[str, dict]] = {}
    started = time.time()
    revision = _revision()
    fleet = None
    nc = None
    try:
        backbone.start()
        nc = await nats.connect(backbone.url)
        await ensure_stream(nc.jetstream())
        fleet = Fleet(fleet_size(config))
        context = BenchContext(
            config, backbone, fleet, BenchPublisher(nc, config.state_bytes), workdir
        )
        for scenario in config.scenarios:
            results[scenario] = {}
            for name in config.servers:
                results[scenario][name] = await _one(context, scenario, name, progress)
    finally:
        if fleet is not None:
            await fleet.shutdown()
        if nc is not None:
            await nc.close()
        backbone.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    config_dict = asdict(config)
    config_dict["sizes"] = {scenario: config.size(scenario) for scenario in config.scenarios}
    config_dict["generator_processes"] = fleet_size(config)
    return {
        "started": datetime.datetime.fromtimestamp(started, datetime.UTC).isoformat(),
        "seconds": round(time.time() - started, 1),
        "machine": machine(),
        "revision": revision,
        "revision_at_end": _revision(),  # the tree is shared: did it change meanwhile?
        "config": config_dict,
        "results": results,
        "targets": check_targets(results),
    }


def _revision() -> dict:
    """The commit the servers ran from, and whether their code had local changes."""
    commit, changed = checkout_revision(("gateway", "protocol", "scorecast"), untracked=True)
    return {"commit": commit, "local_changes": changed}


async def _one(
    context: BenchContext, scenario: str, name: str, progress: Callable[[str], None]
) -> dict:
    config = context.config
    extra: dict[str, Any] = {}  # keywords of the server class SERVERS names
    if name == "scorecast":
        extra = {"workers": config.workers, "extra": config.gateway_args}
    elif name == "nats":
        extra = {"binary": config.nats_server_bin}
    server = SERVERS[name](context.backbone, context.workdir, **extra)
    began = time.monotonic()
    try:
        figures = await RUNNERS[scenario](context, server)
    except Exception as exc:  # one server failing must not hide the others' figures
        figures = {"error": f"{type(exc).__name__}: {exc}"[:500]}
    finally:
        await server.stop()  # already stopped unless the scenario failed or was cancelled
    progress(f"{scenario:6} {name:10} {time.monotonic() - began:6.1f}s  {_headline(figures)}")
    return figures


def _headline(figures: dict) -> str:
    if "error" in figures:
        return "error: " + figures["error"]
    keys = (
        "cpu_us_per_delivery",
        "deliveries_per_second",
        "latency_p99_ms",
        "lost",
        "rss_per_connection_kib",
        "connections_per_second",
    )
    return "  ".join(f"{key}={figures[key]}" for key in keys if figures.get(key) is not None)
