"""``scorecast gateway --workers N``: N processes sharing one port.

Each worker is a whole gateway (its own event loop, NATS connection and
clients) bound with SO_REUSEPORT, so the kernel spreads new connections over
them. The supervisor restarts a worker that dies, and on SIGTERM or SIGINT
passes the signal on (SIGTERM drains every worker) and waits for all.

Metrics: each worker writes its figures to a folder shared with its
siblings once a second; any worker's ``/metrics`` sums the whole group.
"""

from __future__ import annotations

import ctypes
import dataclasses
import logging
import multiprocessing
import os
import shutil
import signal
import tempfile
import time
from multiprocessing.process import BaseProcess
from pathlib import Path

import orjson

from gateway.settings import GatewaySettings
from scorecast.logs import JsonFormatter, setup_logging
from scorecast.natsserver import free_port

__all__ = ["read_figures", "run_workers", "write_figures"]

log = logging.getLogger("scorecast.workers")

RESTART_DELAY = 1.0
PR_SET_PDEATHSIG = 1


def write_figures(folder: str, figures: dict) -> None:
    path = Path(folder, f"{os.getpid()}.json")
    temporary = path.with_suffix(".tmp")
    temporary.write_bytes(orjson.dumps(figures))
    temporary.replace(path)  # atomic: readers never see half a file


def read_figures(folder: str, own: dict) -> list[dict]:
    """Every worker's latest figures, this one's fresh from memory."""
    figures = [own]
    for path in Path(folder).glob("*.json"):
        if path.stem == str(os.getpid()):
            continue
        try:
            figures.append(orjson.loads(path.read_bytes()))
        except (OSError, orjson.JSONDecodeError):
            continue  # a worker that just died or is being replaced
    return figures


def _die_with_parent(supervisor: int) -> None:
    """Ask Linux to SIGTERM this worker when the supervisor dies, even by
    SIGKILL, so no orphan keeps serving the port.

    The supervisor is named by its pid, not recognised as "not PID 1": in a
    container the supervisor itself is PID 1, and a worker that took a parent
    of 1 for a dead one would kill itself in a loop."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # not Linux: the supervisor's signals still reach us
        return
    if os.getppid() != supervisor:  # the supervisor died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


def _worker(settings: GatewaySettings, level: str, form: str, supervisor: int) -> None:
    _die_with_parent(supervisor)
    setup_logging(level, form)
    from gateway.server import run_gateway
    from scorecast.cli import run_loop

    run_loop(run_gateway(settings))


def _logging_setup() -> tuple[str, str]:
    """The supervisor's log level and format, for the workers to log alike."""
    root = logging.getLogger()
    json_lines = any(isinstance(h.formatter, JsonFormatter) for h in root.handlers)
    return logging.getLevelName(root.level), "json" if json_lines else "text"


def run_workers(settings: GatewaySettings) -> int:
    """Supervise ``settings.workers`` worker processes until told to stop."""
    port = settings.port or free_port(settings.host)
    folder = tempfile.mkdtemp(prefix="scorecast-metrics-")
    context = multiprocessing.get_context("spawn")
    workers: dict[int, BaseProcess] = {}
    stopping = False

    def start(index: int) -> None:
        worker_settings = dataclasses.replace(
            settings,
            port=port,
            workers=1,
            node=f"{settings.node}-w{index}",
            reuse_port=True,
            metrics_dir=folder,
        )
        process = context.Process(
            target=_worker,
            args=(worker_settings, *_logging_setup(), os.getpid()),
            name=f"scorecast-gateway-{index}",
        )
        process.start()
        workers[index] = process

    def forward(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        for process in workers.values():
            if process.is_alive() and process.pid:
                os.kill(process.pid, signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for index in range(settings.workers):
        start(index)
    print(f"gateway: {settings.workers} workers on ws://{settings.host}:{port}/ws", flush=True)
    try:
        while True:
            time.sleep(0.2)
            for index, process in list(workers.items()):
                if process.is_alive():
                    continue
                Path(folder, f"{process.pid}.json").unlink(missing_ok=True)
                if stopping:
                    del workers[index]
                else:
                    log.warning("worker %d exited with %s; restarting", index, process.exitcode)
                    time.sleep(RESTART_DELAY)
                    start(index)
            if stopping and not workers:
                return 0
    finally:
        shutil.rmtree(folder, ignore_errors=True)
