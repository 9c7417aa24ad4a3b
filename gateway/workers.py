"""``scorecast gateway --workers N``: N processes sharing one port.

Each worker is a whole gateway (its own event loop, NATS connection and
clients) bound with SO_REUSEPORT, so the kernel spreads new connections over
them. The supervisor restarts a worker that dies, and on SIGTERM or SIGINT
passes the signal on (SIGTERM drains every worker) and waits for all.

What it does when things go wrong (exit statuses as in ``scorecast.cli``):

- The port is checked before any worker starts: a bind without SO_REUSEPORT
  fails when anything listens there (another program, a single-process
  gateway, or the workers of another group, which SO_REUSEPORT would
  otherwise let in silently). The supervisor then also holds an abstract
  unix socket named after the address for as long as it runs, so a second
  group is refused even in the moments when none of the first group's
  workers is listening (all restarting). Both refusals: one line, exit 3.
- A worker that cannot bind exits 3 and the supervisor gives up with 3.
- A worker that dies ``CRASH_LIMIT`` times within ``CRASH_WINDOW`` seconds
  makes the supervisor stop the others and exit 1, instead of looping.
- Workers die with the supervisor (PR_SET_PDEATHSIG), and tell that it died
  by their parent's pid changing from the supervisor's, not by it being 1:
  the supervisor may itself be PID 1 in a container.

Metrics: each worker writes its figures to a folder shared with its
siblings once a second; any worker's ``/metrics`` sums the whole group.
"""

from __future__ import annotations

import ctypes
import dataclasses
import errno
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from multiprocessing.process import BaseProcess
from pathlib import Path

import orjson

from scorecast.gateway.settings import GatewaySettings
from scorecast.logs import JsonFormatter, setup_logging
from scorecast.natsserver import free_port

__all__ = ["read_figures", "run_workers", "write_figures"]

log = logging.getLogger("scorecast.workers")

RESTART_DELAY = 1.0
PR_SET_PDEATHSIG = 1
CRASH_LIMIT, CRASH_WINDOW = 5, 30.0  # deaths within seconds before giving up
STOP_TIMEOUT = 10.0  # seconds the workers get to leave once the supervisor gives up
EXIT_FAILED, EXIT_PORT = 1, 3


class PortTaken(OSError):
    """The group's address is taken; one line says by what."""


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
    # the supervisor died before prctl took effect: we were handed to a
    # reaper. Not "ppid == 1": the supervisor itself is PID 1 in containers.
    if os.getppid() != supervisor:
        os.kill(os.getpid(), signal.SIGTERM)


def _worker(settings: GatewaySettings, level: str, form: str, supervisor: int) -> None:
    _die_with_parent(supervisor)
    setup_logging(level, form)
    from scorecast.gateway.server import PortUnavailable, run_gateway
    from scorecast.runtime import run_loop

    try:
        run_loop(run_gateway(settings))
    except PortUnavailable as error:
        log.error("worker: %s", error.strerror)
        _leave(EXIT_PORT)
    _leave(0)


def _leave(status: int) -> None:
    """Exit now that the gateway has stopped: flush the logs and skip the
    interpreter's teardown, which takes seconds on a busy machine and would
    hold up the supervisor's exit."""
    logging.shutdown()
    sys.stdout.flush()
    os._exit(status)


def claim_port(host: str, port: int) -> socket.socket:
    """Check that nothing holds ``host:port`` and claim it for this group;
    the returned socket is the claim (keep it open). Raises PortTaken."""
    probe = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    try:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is no owner
        probe.bind((host, port))
    except OSError as error:
        why = (error.strerror or str(error)).lower()
        raise PortTaken(error.errno, f"cannot listen on {host}:{port}: {why}") from None
    finally:
        probe.close()
    claim = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        claim.bind(f"\0scorecast-gateway:{host}:{port}")  # abstract: gone when we are
        claim.listen(1)
    except OSError:
        claim.close()
        holder = _claim_holder(host, port)
        raise PortTaken(
            errno.EADDRINUSE,
            f"cannot listen on {host}:{port}: another gateway group holds it{holder}",
        ) from None
    return claim


def _claim_holder(host: str, port: int) -> str:
    """`` (supervisor pid N)`` for the group that claimed the address, if known."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as peer:
        try:
            peer.settimeout(0.5)
            peer.connect(f"\0scorecast-gateway:{host}:{port}")
            credentials = peer.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
        except OSError:
            return ""
    pid = int.from_bytes(credentials[:4], sys.byteorder)
    return f" (supervisor pid {pid})"


def _logging_setup() -> tuple[str, str]:
    """The supervisor's log level and format, for the workers to log alike."""
    root = logging.getLogger()
    json_lines = any(isinstance(h.formatter, JsonFormatter) for h in root.handlers)
    return logging.getLevelName(root.level), "json" if json_lines else "text"


def run_workers(settings: GatewaySettings) -> int:
    """Supervise ``settings.workers`` worker processes until told to stop;
    the exit status (0 stopped, 1 workers kept dying, 3 port taken)."""
    port = settings.port or free_port(settings.host)
    try:
        claim = claim_port(settings.host, port)
    except PortTaken as error:
        print(f"scorecast gateway: {error.strerror}", file=sys.stderr, flush=True)
        return EXIT_PORT
    folder = tempfile.mkdtemp(prefix="scorecast-metrics-")
    context = multiprocessing.get_context("spawn")
    workers: dict[int, BaseProcess] = {}
    deaths: list[float] = []
    stopping = False
    supervisor = os.getpid()

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
            args=(worker_settings, *_logging_setup(), supervisor),
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

    def give_up(status: int) -> int:
        forward(signal.SIGTERM, None)
        deadline = time.monotonic() + STOP_TIMEOUT
        for process in workers.values():
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                process.kill()
                process.join()
        return status

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    try:
        for index in range(settings.workers):
            start(index)
        print(f"gateway: {settings.workers} workers on ws://{settings.host}:{port}/ws", flush=True)
        while True:
            time.sleep(0.2)
            for index, process in list(workers.items()):
                if process.is_alive():
                    continue
                Path(folder, f"{process.pid}.json").unlink(missing_ok=True)
                if stopping:
                    del workers[index]
                    continue
                del workers[index]
                if process.exitcode == EXIT_PORT:
                    log.error("worker %d cannot listen on port %s: giving up", index, port)
                    return give_up(EXIT_PORT)
                now = time.monotonic()
                deaths[:] = [t for t in deaths if now - t < CRASH_WINDOW] + [now]
                if len(deaths) >= CRASH_LIMIT:
                    log.error(
                        "workers died %d times within %.0f s (last: worker %d, exit %s): giving up",
                        len(deaths),
                        CRASH_WINDOW,
                        index,
                        process.exitcode,
                    )
                    return give_up(EXIT_FAILED)
                log.warning("worker %d exited with %s; restarting", index, process.exitcode)
                time.sleep(RESTART_DELAY)
                if not stopping:
                    start(index)
            if stopping and not workers:
                return 0
    finally:
        claim.close()
        shutil.rmtree(folder, ignore_errors=True)
