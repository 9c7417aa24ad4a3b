"""The processes of a benchmark run: the NATS backbone and the servers under test.

- :class:`Backbone`: nats-server with JetStream (the ``SCORES`` stream) and a
  leaf-node port. Publishers write here; its CPU is nobody's score.
- :class:`ScorecastGateway`: ``python -m scorecast.cli gateway`` on the backbone.
- :class:`NatsListener`: a second nats-server, no JetStream, with a WebSocket
  listener, joined to the backbone as a leaf node. It is what a user would
  run instead of a gateway tier, and like the gateway it only receives from
  the backbone and fans out, so neither pays for JetStream's storage.
- :class:`NaiveServer`: :mod:`loadtest.bench_naive` on the backbone.
- :class:`FloorServer`: :mod:`loadtest.bench_floor` on the backbone, one
  pre-built frame written per client per event: the floor every ratio is
  taken against.

Each server under test is its own process tree (``pid``), started fresh per
scenario with :meth:`start` and ended with :meth:`stop`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path

import nats

from scorecast.natsserver import NatsServer, find_nats_server, free_port

__all__ = [
    "SERVERS",
    "Backbone",
    "FloorServer",
    "NaiveServer",
    "NatsListener",
    "ScorecastGateway",
    "ServerError",
]

ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT = 30.0


class ServerError(RuntimeError):
    """A server under test did not start or died."""


class Backbone(NatsServer):
    """The JetStream server of a run, with a port for leaf nodes."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.leaf_port = free_port(self.host)

    def _config(self) -> str:
        return super()._config() + f'leafnodes {{ listen: "{self.host}:{self.leaf_port}" }}\n'


def _environment() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


class _Process:
    """A server under test run as a child process, output to a log file."""

    name = "?"
    mode = "?"

    def __init__(self, backbone: Backbone, workdir: Path, host: str = "127.0.0.1") -> None:
        self.backbone = backbone
        self.workdir = workdir
        self.host = host
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self.log = workdir / f"{self.name}.log"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def _spawn(self, command: list[str], **kwargs) -> None:
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                command, stdout=kwargs.pop("stdout", log), stderr=log, cwd=ROOT, **kwargs
            )

    def _check_alive(self) -> None:
        if self.process is None or self.process.poll() is not None:
            tail = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            raise ServerError(f"{self.name} exited during start; log tail:\n{tail}")

    async def start(self) -> None:
        raise NotImplementedError

    async def stop(self) -> None:
        if self.process is None:
            return
        process, self.process = self.process, None
        if process.poll() is None:
            process.terminate()
            try:
                await asyncio.to_thread(process.wait, 10)
            except subprocess.TimeoutExpired:
                process.kill()
                await asyncio.to_thread(process.wait)


async def _http_ok(host: str, port: int, path: str) -> bool:
    try:
        reader, writer = await asyncio.open_connection(host, port)
    except OSError:
        return False
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        line = await asyncio.wait_for(reader.readline(), 2)
        return b" 200 " in line
    except (OSError, TimeoutError):
        return False
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


class ScorecastGateway(_Process):
    name = mode = "scorecast"
    # how the gateway is run; an experiment may point this at a patched copy
    launcher: tuple[str, ...] = (sys.executable, "-m", "scorecast.cli")

    def __init__(self, *args, workers: int = 1, extra: tuple[str, ...] = (), **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.workers = workers
        self.extra = extra

    async def start(self) -> None:
        self.port = free_port(self.host)
        command = [*self.launcher, "--log-level", "warning", "gateway"]
        command += ["--nats", self.backbone.url, "--host", self.host, "--port", str(self.port)]
        command += ["--workers", str(self.workers), *self.extra]
        self._spawn(command, env=_environment())
        deadline = time.monotonic() + START_TIMEOUT
        while not await _http_ok(self.host, self.port, "/readyz"):
            self._check_alive()
            if time.monotonic() > deadline:
                raise ServerError(f"scorecast gateway not ready on port {self.port}")
            await asyncio.sleep(0.05)


class NaiveServer(_Process):
    name = mode = "naive"
    module = "loadtest.bench_naive"

    async def start(self) -> None:
        self.port = free_port(self.host)
        command = [sys.executable, "-m", self.module, "--nats", self.backbone.url]
        command += ["--host", self.host, "--port", str(self.port)]
        self._spawn(command, env=_environment(), stdout=subprocess.PIPE)
        line = await asyncio.wait_for(
            asyncio.to_thread(self.process.stdout.readline), START_TIMEOUT
        )
        if line.strip() != b"ready":
            self._check_alive()
            raise ServerError(f"{self.name} server said {line!r} instead of 'ready'")


class FloorServer(NaiveServer):
    """:mod:`loadtest.bench_floor`; its clients speak the naive server's URL and frames."""

    name = "floor"
    mode = "naive"
    module = "loadtest.bench_floor"


class NatsListener(_Process):
    name = mode = "nats"

    def __init__(self, *args, binary: str | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.binary = find_nats_server(binary)

    async def start(self) -> None:
        self.port = free_port(self.host)
        client_port = free_port(self.host)
        config = self.workdir / "nats-listener.conf"
        leaf_url = f"nats://{self.host}:{self.backbone.leaf_port}"
        config.write_text(
            f'server_name: "ws-listener-{self.port}"\n'
            f'listen: "{self.host}:{client_port}"\n'
            f'websocket {{ listen: "{self.host}:{self.port}", no_tls: true, compression: false }}\n'
            f'leafnodes {{ remotes: [ {{ url: "{leaf_url}" }} ] }}\n'
        )
        self._spawn([self.binary, "-c", str(config)])
        # ready when a message published on the backbone reaches a listener client
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            self._check_alive()
            if time.monotonic() > deadline:
                raise ServerError("nats-server WebSocket listener not joined to the backbone")
            with contextlib.suppress(Exception):
                if await _probe(f"nats://{self.host}:{client_port}", self.backbone.url):
                    return
            await asyncio.sleep(0.1)


async def _quiet(error: Exception) -> None:
    """nats-py logs every failed attempt unless told otherwise; probes fail until ready."""


async def _probe(listener_url: str, backbone_url: str) -> bool:
    options = {"connect_timeout": 1, "allow_reconnect": False, "error_cb": _quiet}
    listener = await nats.connect(listener_url, **options)
    backbone = await nats.connect(backbone_url, **options)
    try:
        subscription = await listener.subscribe("bench.probe")
        await listener.flush()
        for _ in range(10):
            await backbone.publish("bench.probe", b"?")
            await backbone.flush()
            with contextlib.suppress(nats.errors.TimeoutError):
                await subscription.next_msg(timeout=0.2)
                return True
        return False
    finally:
        await listener.close()
        await backbone.close()


SERVERS = {cls.name: cls for cls in (ScorecastGateway, FloorServer, NatsListener, NaiveServer)}
