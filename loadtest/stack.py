"""Gateway processes for storms and their tests: ``scorecast gateway`` as
children, each on its own port, started and stopped together.

The gateway is run as ``python -m scorecast.cli gateway`` from the checkout,
so nothing needs installing. ``start()`` returns when every gateway answers
``/readyz`` with 200; ``stop()`` sends SIGTERM and kills what lingers.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

__all__ = ["GatewayProcesses", "metrics_of"]

ROOT = Path(__file__).resolve().parent.parent


def _ready(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
            sock.sendall(b"GET /readyz HTTP/1.0\r\n\r\n")
            return sock.recv(64).startswith(b"HTTP/1.1 200")
    except OSError:
        return False


def metrics_of(port: int) -> dict[str, float]:
    """The gateway's ``/metrics`` as ``{sample name: value}`` (blocking)."""
    from scorecast.loadtest.scrape import parse_metrics

    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    body = b"".join(chunks).partition(b"\r\n\r\n")[2]
    return parse_metrics(body.decode())


class GatewayProcesses:
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

    def start(self, timeout: float = 30.0) -> GatewayProcesses:
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        for port in self.ports:
            command = [sys.executable, "-m", "scorecast.cli", "--log-level", "warning", "gateway",
                       "--nats", self.nats_url, "--port", str(port),
                       "--workers", str(self.workers), *self.extra]  # fmt: skip
            log = subprocess.DEVNULL
            if self.log_dir:
                log = open(Path(self.log_dir, f"gateway-{port}.log"), "ab")  # noqa: SIM115
            self.processes.append(
                subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=log)
            )
        deadline = time.monotonic() + timeout
        waiting = list(self.ports)
        while waiting:
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"gateways on {waiting} not ready in {timeout} s")
            for process in self.processes:
                if process.poll() is not None:
                    self.stop()
                    raise RuntimeError(f"a gateway exited with {process.returncode}")
            waiting = [port for port in waiting if not _ready(port)]
            time.sleep(0.1)
        return self

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.terminate()
        for process in self.processes:
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.processes = []

    def __enter__(self) -> GatewayProcesses:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
