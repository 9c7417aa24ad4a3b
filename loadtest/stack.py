"""The one harness that starts gateway processes and waits for them, for the
tests, the faults suite, ``scorecast bench`` and storms.

- :func:`gateway_command`: the ``scorecast gateway`` command line.
- :func:`spawn_gateway`: that command as a child process, run from the
  checkout (``python -m scorecast.cli``, so nothing needs installing).
- :func:`wait_ready`: until ``/readyz`` answers 200; raises when the process
  exits first or the deadline passes.
- :func:`start_gateway`: both; :func:`stop_process`: SIGTERM (or another
  signal), then a kill for what lingers.
- :class:`GatewayProcesses`: several gateways, started and stopped together.
- :func:`http_get`, :func:`metrics_of`: one blocking GET, and ``/metrics``.
- :func:`checkout_revision`: the commit the gateways run from, for results.

Blocking calls; async callers run them with ``asyncio.to_thread``. Every
wait has a timeout the caller can shorten. nats-server processes are
:class:`scorecast.natsserver.NatsServer` (the runtime's own, which ``scorecast
dev`` uses too).
"""

from __future__ import annotations

import contextlib
import http.client
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

__all__ = [
    "LAUNCHER",
    "READY_TIMEOUT",
    "ROOT",
    "STOP_TIMEOUT",
    "GatewayNotReady",
    "GatewayProcesses",
    "checkout_environment",
    "checkout_revision",
    "gateway_command",
    "http_get",
    "metrics_of",
    "spawn_gateway",
    "start_gateway",
    "stop_process",
    "wait_ready",
]

ROOT = Path(__file__).resolve().parent.parent
READY_TIMEOUT = 30.0  # seconds a gateway may take to answer /readyz with 200
STOP_TIMEOUT = 15.0  # seconds a gateway may take to exit after the signal
# how a gateway is run; an experiment may point this at a patched copy
LAUNCHER: tuple[str, ...] = (sys.executable, "-m", "scorecast.cli")


def checkout_revision(
    paths: Sequence[str] = (), *, untracked: bool = False
) -> tuple[str | None, bool]:
    """The checkout's short commit and whether its files (below ``paths``; all
    when empty; new files too with ``untracked``) have uncommitted changes:
    which gateway a result measured. ``(None, False)`` outside a git checkout."""

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", "-C", str(ROOT), *args],
                                  capture_output=True, text=True, timeout=10)  # fmt: skip
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "--short", "HEAD")
    if not commit:
        return None, False
    status = ["status", "--porcelain"] + ([] if untracked else ["--untracked-files=no"])
    return commit, bool(git(*status, "--", *paths))


class GatewayNotReady(TimeoutError):
    """A gateway did not answer ``/readyz`` with 200 in time, or exited first."""


def http_get(host: str, port: int, path: str, timeout: float = 2.0) -> tuple[int, bytes]:
    """(status, body) of one ``GET``; raises OSError (refused, reset, timed out)."""
    connection = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        connection.request("GET", path)
        answer = connection.getresponse()
        return answer.status, answer.read()
    except http.client.HTTPException as error:
        raise OSError(f"bad HTTP answer: {error!r}") from error
    finally:
        connection.close()


def metrics_of(port: int, host: str = "127.0.0.1", timeout: float = 5.0) -> dict[str, float]:
    """The gateway's ``/metrics`` as ``{sample name: value}``, labels folded into
    the name (see :func:`scorecast.loadtest.scrape.parse_metrics`)."""
    from scorecast.loadtest.scrape import parse_metrics

    status, body = http_get(host, port, "/metrics", timeout)
    if status != 200:
        raise OSError(f"GET /metrics answered {status}")
    return parse_metrics(body.decode())


def gateway_command(
    nats_url: str,
    port: int,
    *,
    host: str | None = None,
    workers: int | None = None,
    log_level: str = "warning",
    extra: Sequence[str] = (),
    launcher: Sequence[str] = LAUNCHER,
) -> list[str]:
    """``scorecast gateway`` on ``port``; ``host`` and ``workers`` only when given."""
    command = [*launcher, "--log-level", log_level, "gateway", "--nats", nats_url]
    if host is not None:
        command += ["--host", host]
    command += ["--port", str(port)]
    if workers is not None:
        command += ["--workers", str(workers)]
    return [*command, *extra]


def checkout_environment() -> dict[str, str]:
    """This environment with the checkout first on PYTHONPATH."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def spawn_gateway(
    nats_url: str,
    port: int,
    *,
    log: IO[bytes] | int | None = None,
    **options: Any,
) -> subprocess.Popen[bytes]:
    """The gateway as a child process (see :func:`gateway_command` for ``options``),
    output to ``log`` (default: this process's own)."""
    command = gateway_command(nats_url, port, **options)
    return subprocess.Popen(command, cwd=ROOT, env=checkout_environment(), stdout=log, stderr=log)


def wait_ready(
    port: int,
    *,
    host: str = "127.0.0.1",
    process: subprocess.Popen | None = None,
    timeout: float = READY_TIMEOUT,
    interval: float = 0.1,
) -> None:
    """Until ``/readyz`` says 200; :class:`GatewayNotReady` when ``process``
    exits first or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(OSError):
            if http_get(host, port, "/readyz", timeout=1)[0] == 200:
                return
        if process is not None and process.poll() is not None:
            raise GatewayNotReady(f"the gateway on port {port} exited with {process.returncode}")
        if time.monotonic() > deadline:
            raise GatewayNotReady(f"the gateway on port {port} was not ready in {timeout} s")
        time.sleep(interval)


def stop_process(
    process: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = STOP_TIMEOUT
) -> None:
    """``sig``, then SIGKILL after ``timeout`` seconds; waits for the exit."""
    if process.poll() is None:
        process.send_signal(sig)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def start_gateway(
    nats_url: str, port: int, *, timeout: float = READY_TIMEOUT, **options: Any
) -> subprocess.Popen[bytes]:
    """:func:`spawn_gateway`, returned once ready; killed when it never is."""
    process = spawn_gateway(nats_url, port, **options)
    try:
        wait_ready(port, process=process, timeout=timeout)
    except BaseException:
        stop_process(process, signal.SIGKILL)
        raise
    return process


class GatewayProcesses:
    """Gateways on ``ports``, started together (``start`` returns when every one
    is ready) and stopped together; a context manager."""

    def __init__(self, nats_url: str, ports: list[int], *, workers: int = 1,
                 extra: tuple[str, ...] = (), log_dir: str | None = None) -> None:  # fmt: skip
        self.nats_url = nats_url
        self.ports = ports
        self.workers = workers
        self.extra = extra
        self.log_dir = log_dir
        self.processes: list[subprocess.Popen] = []

    @property
    def urls(self) -> list[str]:
        return [f"ws://127.0.0.1:{port}/ws" for port in self.ports]

    def start(self, timeout: float = READY_TIMEOUT) -> GatewayProcesses:
        for port in self.ports:
            log: IO[bytes] | int = subprocess.DEVNULL
            if self.log_dir:
                log = open(Path(self.log_dir, f"gateway-{port}.log"), "ab")  # noqa: SIM115
            options = {"workers": self.workers, "extra": self.extra}
            self.processes.append(spawn_gateway(self.nats_url, port, log=log, **options))
        try:
            deadline = time.monotonic() + timeout
            for port, process in zip(self.ports, self.processes, strict=True):
                left = max(0.0, deadline - time.monotonic())
                wait_ready(port, process=process, timeout=left)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.terminate()
        for process in self.processes:
            stop_process(process)
        self.processes = []

    def __enter__(self) -> GatewayProcesses:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
