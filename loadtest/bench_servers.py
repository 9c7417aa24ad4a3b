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
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import nats

from scorecast.loadtest.stack import (
    LAUNCHER,
    READY_TIMEOUT,
    ROOT,
    GatewayNotReady,
    checkout_environment,
    gateway_command,
    stop_process,
    wait_ready,
)
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

START_TIMEOUT = READY_TIMEOUT


class ServerError(RuntimeError):
    """A server under test did not start or died."""


class Backbone(NatsServer):
    """The JetStream server of a run, with a port for leaf nodes."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.leaf_port = free_port(self.host)

    def _config(self) -> str:
        return super()._config() + f'leafnodes {{ listen: "{self.host}:{self.leaf_port}" }}\n'


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

    def _spawn(self, command: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                command, stdout=kwargs.pop("stdout", log), stderr=log, cwd=ROOT, **kwargs
            )
        return self.process

    def _check_alive(self) -> None:
        if self.process is None or self.process.poll() is not None:
            tail = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            raise ServerError(f"{self.name} exited during start; log tail:\n{tail}")

    async def start(self) -> None:
        raise NotImplementedError

    async def stop(self) -> None:
        if self.process is not None:
            process, self.process = self.process, None
            await asyncio.to_thread(stop_process, process, timeout=10)


class ScorecastGateway(_Process):
    name = mode = "scorecast"
    # how the gateway is run; an experiment may point this at a patched copy
    launcher: tuple[str, ...] = LAUNCHER

    def __init__(
        self, *args: Any, workers: int = 1, extra: tuple[str, ...] = (), **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.workers = workers
        self.extra = extra

    async def start(self) -> None:
        self.port = free_port(self.host)
        command = gateway_command(
            self.backbone.url,
            self.port,
            launcher=self.launcher,
            host=self.host,
            workers=self.workers,
            extra=self.extra,
        )
        self._spawn(command, env=checkout_environment())
        try:
            await asyncio.to_thread(wait_ready, self.port, host=self.host, process=self.process,
                                    timeout=START_TIMEOUT, interval=0.05)  # fmt: skip
        except GatewayNotReady as error:
            self._check_alive()
            raise ServerError(f"scorecast gateway: {error}") from None


class NaiveServer(_Process):
    name = mode = "naive"
    module = "loadtest.bench_naive"

    async def start(self) -> None:
        self.port = free_port(self.host)
        command = [sys.executable, "-m", self.module, "--nats", self.backbone.url]
        command += ["--host", self.host, "--port", str(self.port)]
        process = self._spawn(command, env=checkout_environment(), stdout=subprocess.PIPE)
        assert process.stdout is not None  # stdout=PIPE
        line = await asyncio.wait_for(asyncio.to_thread(process.stdout.readline), START_TIMEOUT)
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

    def __init__(self, *args: Any, binary: str | None = None, **kwargs: Any) -> None:
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
