"""``scorecast cluster``: the production shape on loopback.

Three clustered nats-servers with JetStream (each its own store), the SCORES
stream with three replicas, several gateways each given every NATS URL, and
the match simulator; stopped together on Ctrl-C or SIGTERM. It is what
``docker compose up`` runs, for a machine without a container engine.

:class:`NatsCluster` and :func:`ensure_scores_stream` are the reusable part:
the cluster tests start the same cluster and wait for it the same way.

A cluster is usable in two steps, and both need waiting: the nodes accept
clients as soon as they listen, but JetStream answers only once the nodes have
elected a meta leader, and a stream with three replicas can be placed only
once the leader knows all three peers.

NATS runs with authorization, as in production (PROTOCOL.md section 9): one
user per role (:mod:`scorecast.nats_roles`), passwords made up for the run,
nobody anonymous. The gateways and the simulator connect with their role's
credentials; the publisher's are printed, for ingest and replay.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import shutil
import signal
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import nats
import nats.errors

from scorecast.gateway.server import Gateway
from scorecast.gateway.settings import GatewaySettings
from scorecast.nats_roles import authorization
from scorecast.natsserver import NatsServer, free_port
from scorecast.protocol.nats_auth import ANONYMOUS, NatsAuth
from scorecast.publishers.errors import BackendError
from scorecast.publishers.settings import PublisherSettings, SimulatorSettings
from scorecast.publishers.simulator import run_simulator
from scorecast.publishers.stream import ensure_stream
from scorecast.stack_settings import ClusterSettings

__all__ = ["NatsCluster", "Roles", "ensure_scores_stream", "run_cluster"]

log = logging.getLogger("scorecast.cluster")

POLL = 0.2  # seconds between two readiness probes


class Roles:
    """Credentials of the two NATS roles, with passwords made up on the spot."""

    def __init__(self) -> None:
        self.gateway = NatsAuth(user="gateway", password=secrets.token_urlsafe(18))
        self.publisher = NatsAuth(user="publisher", password=secrets.token_urlsafe(18))

    def config(self) -> str:
        """The nats-server ``authorization`` block granting exactly these roles."""
        return authorization(f'"{self.gateway.password}"', f'"{self.publisher.password}"')


class NatsCluster:
    """``size`` nats-servers on ``host`` joined in one cluster, JetStream on each.

    ``client_port`` 0 takes free ports; otherwise the nodes listen on
    ``client_port``, ``client_port + 1``, ... Route ports are always free
    ones. Stores and logs live under ``base_dir`` (a temporary folder,
    removed by :meth:`stop`, when not given).
    """

    def __init__(
        self,
        size: int = 3,
        *,
        host: str = "127.0.0.1",
        client_port: int = 0,
        base_dir: str | None = None,
        binary: str | None = None,
        name: str = "scorecast",
        extra_config: str = "",
        die_with_parent: bool = False,
    ) -> None:
        if size < 1:
            raise ValueError(f"a cluster needs at least one node, not {size}")
        self._own_dir = base_dir is None
        self.base_dir = Path(base_dir or tempfile.mkdtemp(prefix="scorecast-cluster-"))
        route_ports = [free_port(host) for _ in range(size)]
        routes = [f"nats://{host}:{port}" for port in route_ports]
        self.servers: list[NatsServer] = []
        for index, route_port in enumerate(route_ports):
            node = f"n{index + 1}"
            store = self.base_dir / node
            store.mkdir(parents=True, exist_ok=True)
            self.servers.append(
                NatsServer(
                    port=client_port + index if client_port else None,
                    host=host,
                    store_dir=str(store),
                    name=node,
                    cluster_port=route_port,
                    routes=routes,
                    cluster_name=name,
                    binary=binary,
                    log_file=str(self.base_dir / f"{node}.log"),
                    extra_config=extra_config,
                    die_with_parent=die_with_parent,
                )
            )

    @property
    def urls(self) -> list[str]:
        return [server.url for server in self.servers]

    @property
    def nats_url(self) -> str:
        """Every node's URL, comma-separated, as ``--nats`` takes them."""
        return ",".join(self.urls)

    def index_of(self, url: object) -> int:
        """The node a client's ``connected_url`` (or a URL string) points at."""
        port = getattr(url, "port", None) or int(str(url).rsplit(":", 1)[1])
        for index, server in enumerate(self.servers):
            if server.port == port:
                return index
        raise ValueError(f"{url} is not a node of this cluster")

    def start(self, timeout: float = 15.0) -> NatsCluster:
        try:
            for server in self.servers:
                server.start(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def kill(self, index: int) -> None:
        """SIGKILL one node: no goodbye to its clients or its peers."""
        self.servers[index].stop(kill=True)

    def stop(self) -> None:
        for server in self.servers:
            server.stop()
        if self._own_dir:
            shutil.rmtree(self.base_dir, ignore_errors=True)

    async def wait_for_jetstream(self, timeout: float = 30.0, auth: NatsAuth = ANONYMOUS) -> None:
        """Return once every running node answers JetStream requests.

        A node answers ``$JS.API.INFO`` only after the meta group has a
        leader; before that the request gets no responder or a 503.
        """
        deadline = time.monotonic() + timeout
        for server in self.servers:
            if server.process is not None:
                await _until(
                    deadline, f"JetStream on {server.url}", _account_info, server.url, auth
                )

    def __enter__(self) -> NatsCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


async def _account_info(url: str, auth: NatsAuth) -> None:
    nc = await nats.connect(
        servers=[url], allow_reconnect=False, connect_timeout=1, **auth.options()
    )
    try:
        await nc.jetstream(timeout=1.0).account_info()
    finally:
        await nc.close()


async def ensure_scores_stream(
    nats_url: str,
    *,
    replicas: int = 3,
    stream_history: int = 1000,
    timeout: float = 30.0,
    auth: NatsAuth = ANONYMOUS,
) -> None:
    """Create (or bring to this configuration) SCORES, retrying while the
    cluster cannot place ``replicas`` copies yet."""

    async def attempt() -> None:
        servers = nats_url.split(",")
        nc = await nats.connect(
            servers=servers, allow_reconnect=False, connect_timeout=1, **auth.options()
        )
        try:
            await ensure_stream(
                nc.jetstream(timeout=2.0), history=stream_history, replicas=replicas
            )
        finally:
            await nc.close()

    await _until(time.monotonic() + timeout, f"stream SCORES with {replicas} replicas", attempt)


async def _until(
    deadline: float, what: str, attempt: Callable[..., Awaitable[None]], *args: object
) -> None:
    """Run ``attempt`` until it succeeds; past ``deadline``, raise with its last error."""
    while True:
        try:
            return await attempt(*args)
        except (nats.errors.Error, BackendError, OSError) as exc:
            if time.monotonic() >= deadline:
                raise TimeoutError(f"{what}: not ready in time; last error: {exc!r}") from exc
            log.debug("%s not ready yet: %r", what, exc)
        await asyncio.sleep(POLL)


async def run_cluster(
    settings: ClusterSettings | None = None, *, stop: asyncio.Event | None = None
) -> None:
    """Run three NATS nodes, ``settings.gateways`` gateways and the simulator
    until ``stop`` is set, or, without one, until SIGINT or SIGTERM.

    Gateway ``i`` listens on ``port + i`` (all on free ports when ``port`` is
    0). Prints one line per NATS node and per gateway with its URLs.
    """
    s = settings or ClusterSettings()
    host, port, replicas = s.host, s.port, s.replicas
    if s.gateways < 1:
        raise ValueError(f"--gateways must be at least 1, not {s.gateways}")
    if not 1 <= replicas <= 3:
        raise ValueError(f"--replicas must be 1, 2 or 3 (three NATS nodes), not {replicas}")
    loop = asyncio.get_running_loop()
    signals = stop is None
    stop = stop or asyncio.Event()
    if signals:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
    roles = Roles()
    # the nodes die with this process even when it is SIGKILLed; PDEATHSIG
    # follows the thread that started them, so they start on this one
    cluster = NatsCluster(
        3,
        client_port=s.nats_port,
        binary=s.nats_server_bin,
        extra_config=roles.config(),
        die_with_parent=True,
    )
    nodes: list[Gateway] = []
    simulator: asyncio.Task | None = None
    try:
        cluster.start()
        await cluster.wait_for_jetstream(s.nats_ready_timeout, auth=roles.publisher)
        await ensure_scores_stream(
            cluster.nats_url, replicas=replicas, timeout=s.nats_ready_timeout, auth=roles.publisher
        )
        for index in range(s.gateways):
            gateway = GatewaySettings(
                nats=tuple(cluster.urls),
                host=host,
                port=port + index if port else 0,
                node=f"gw{index + 1}",
                nats_user=roles.gateway.user,
                nats_password=roles.gateway.password,
            )
            nodes.append(Gateway(gateway))
            await nodes[-1].start()
        simulator = asyncio.create_task(
            run_simulator(
                PublisherSettings(nats=tuple(cluster.urls), replicas=replicas).with_auth(
                    roles.publisher
                ),
                SimulatorSettings(matches=s.matches, minute_seconds=s.minute_seconds),
                stop=stop,
            )
        )
        for server in cluster.servers:
            print(f"NATS:      {server.url}  ({server.name}, store {server.store_dir})", flush=True)
        for node in nodes:
            base = f"{host}:{node.port}"
            print(f"WebSocket: ws://{base}/ws  (metrics http://{base}/metrics)", flush=True)
        print(
            f"Publish:   --nats {cluster.nats_url} --nats-user publisher "
            f"--nats-password {roles.publisher.password}  (anonymous clients are refused)",
            flush=True,
        )
        print(f"Stream:    SCORES, {replicas} replicas; Ctrl-C stops everything", flush=True)
        await _wait_either(stop, simulator)
    finally:
        stop.set()
        if simulator is not None:
            # its error, if any, was raised by _wait_either already
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(simulator, 10)
        for node in nodes:
            await node.stop()
        await asyncio.to_thread(cluster.stop)
        if signals:
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(signum)


async def _wait_either(stop: asyncio.Event, simulator: asyncio.Task) -> None:
    """Until ``stop`` is set; a simulator that dies first ends the run with its error."""
    stopped = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({stopped, simulator}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopped.cancel()
    if simulator.done() and not stop.is_set():
        simulator.result()  # raises the simulator's error
        raise RuntimeError("the simulator stopped on its own")
