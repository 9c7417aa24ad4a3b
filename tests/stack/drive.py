"""Drive the running stack of docker-compose.yml (started by
scripts/test-stack.sh) from the host, through its published ports only, and
the engine's CLI for faults. Exits non-zero with the reason on the first
broken promise; prints the figures at the end.

1. 200 WebSocket clients through HAProxy, spread over both gateway
   containers, subscribe to every simulated match and to an ingest topic;
   every event must follow its predecessor (seq + 1), ever.
2. An ingest POST reaches every client.
3. Prometheus: every target up, every dashboard panel's query answers with
   data, every alert rule evaluated without error.
4. The JetStream leader of SCORES (a NATS container) is killed mid-stream and
   started again: clients keep receiving; the time until every client has a
   fresh event is the recovery time.
5. One gateway container loses NATS (its network namespace refuses port
   4222): the NATS alert fires for it; then NATS comes back, its clients
   catch up without a gap.
6. One gateway container is stopped (SIGTERM: drain): its clients get
   `reconnect` hints, resume on the other with `since`, HAProxy's /readyz
   check takes it out, nothing is lost.
7. The simulator stops: every client ends at each topic's final seq and
   state as stored in the stream.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import nats
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from scorecast.protocol.merge_patch import apply_patch
from scorecast.protocol.nats_auth import NatsAuth

PROJECT = os.environ.get("SCORECAST_STACK_PROJECT", "scorecast")
CLIENTS = int(os.environ.get("SCORECAST_STACK_CLIENTS", "200"))
LB = "ws://127.0.0.1:18080/ws"
STATS = "http://127.0.0.1:18404"
INGEST = "http://127.0.0.1:18090/v1/events"
PROMETHEUS = "http://127.0.0.1:19090"
NATS_URLS = ["nats://127.0.0.1:14222", "nats://127.0.0.1:14223", "nats://127.0.0.1:14224"]
MATCHES = [f"match.{n}" for n in range(1000, 1020)]  # simulator: --matches 20
INGEST_TOPIC = "match.stack-ingest"
TOPICS = [*MATCHES, "football.live", INGEST_TOPIC]
DASHBOARD = Path(__file__).resolve().parents[2] / "deploy/grafana/dashboards/scorecast.json"
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "1m", "$instance": ".+"}

started = time.monotonic()


def say(text: str) -> None:
    print(f"[drive +{time.monotonic() - started:5.1f}s] {text}", flush=True)


class Failed(Exception):
    pass


def podman(*args: str, check: bool = True) -> str:
    result = subprocess.run(["podman", *args], capture_output=True, text=True, timeout=120)
    if check and result.returncode != 0:
        raise Failed(f"podman {' '.join(args)}: {result.stderr.strip()}")
    return result.stdout.strip()


RETRIED = (
    TimeoutError, aiohttp.ClientError, OSError, KeyError, InvalidStatus, ConnectionClosed,
    nats.errors.Error,
)  # fmt: skip


async def apodman(*args: str, check: bool = True) -> str:
    """podman off the event loop: a command on a container being stopped
    waits for podman's lock, and the clients must keep reading meanwhile."""
    return await asyncio.to_thread(podman, *args, check=check)


async def until(what: str, check, timeout: float, interval: float = 0.5):
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = await check()
        except RETRIED as error:
            last = error
        else:
            if last:
                return last
        await asyncio.sleep(interval)
    raise Failed(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")


# --- clients -----------------------------------------------------------------


@dataclass
class Client:
    index: int
    seq: dict[str, int] = field(default_factory=dict)
    state: dict[str, Any] = field(default_factory=dict)
    nodes: list[str] = field(default_factory=list)
    events: int = 0
    gaps: list[str] = field(default_factory=list)
    skipped: int = 0  # events a resume snapshot jumped over
    hints: int = 0
    unexpected_closes: int = 0
    refused: int = 0
    resumes: int = 0
    last_event: float = 0.0
    stop: bool = False
    ready: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def node(self) -> str:
        return self.nodes[-1] if self.nodes else ""

    async def run(self) -> None:
        backoff = 0.2
        while not self.stop:
            try:
                async with connect(LB, open_timeout=10, max_size=None) as ws:
                    await self.session(ws)
                    backoff = 0.2
            except InvalidStatus:
                self.refused += 1
            except (TimeoutError, OSError, ConnectionClosed):
                if not self.stop:
                    self.unexpected_closes += 1
            if not self.stop:
                await asyncio.sleep(backoff)
                backoff = min(2.0, backoff * 2)

    async def session(self, ws) -> None:
        welcome = json.loads(await ws.recv())
        assert welcome["type"] == "welcome", welcome
        self.nodes.append(welcome["node"])
        request: dict[str, Any] = {"type": "subscribe", "id": 1, "topics": TOPICS}
        if self.seq:
            request["since"] = dict(self.seq)
            self.resumes += 1
        await ws.send(json.dumps(request))
        async for raw in ws:
            message = json.loads(raw)
            kind = message["type"]
            if kind == "event":
                self.on_event(message)
            elif kind == "snapshot":
                self.on_snapshot(message)
            elif kind == "subscribed":
                self.ready.set()
            elif kind == "reconnect":
                self.hints += 1
                return  # leave now; the gateway closes with 1012 soon anyway
            elif kind == "error":
                self.gaps.append(f"error frame {message}")
            if self.stop:
                return

    def on_event(self, message: dict) -> None:
        topic, seq = message["topic"], message["seq"]
        previous = self.seq.get(topic)
        if previous is None or seq != previous + 1:
            self.gaps.append(f"{topic}: event {seq} after {previous}")
        self.seq[topic] = seq
        self.state[topic] = apply_patch(self.state.get(topic), message["data"])
        self.events += 1
        self.last_event = time.monotonic()

    def on_snapshot(self, message: dict) -> None:
        topic, seq = message["topic"], message["seq"]
        previous = self.seq.get(topic)
        if previous is not None and seq > previous:
            self.skipped += seq - previous
        self.seq[topic] = seq
        self.state[topic] = message["state"]


# --- the stack's parts -------------------------------------------------------


async def get_json(http: aiohttp.ClientSession, url: str, **params) -> Any:
    async with http.get(url, params=params, timeout=aiohttp.ClientTimeout(total=10)) as answer:
        answer.raise_for_status()
        return await answer.json(content_type=None)


async def prom(http: aiohttp.ClientSession, path: str, **params) -> Any:
    body = await get_json(http, PROMETHEUS + path, **params)
    if body.get("status") != "success":
        raise Failed(f"Prometheus {path} {params}: {body}")
    return body["data"]


async def _quiet(error: Exception) -> None:
    pass  # a node of the cluster being down is what this drive does


def nats_options() -> dict[str, Any]:
    """The drive reads SCORES as a gateway does: with the gateway role (the
    compose file's development password unless the environment says other)."""
    auth = NatsAuth(
        user=os.environ.get("SCORECAST_NATS_USER", "gateway"),
        password=os.environ.get(
            "SCORECAST_NATS_PASSWORD",
            os.environ.get("NATS_GATEWAY_PASSWORD", "gateway-dev-password"),
        ),
    )
    return auth.options()


async def stream_leader(http: aiohttp.ClientSession) -> str:
    """SCORES' leader as JetStream's API reports it (any node answers)."""
    nc = await nats.connect(
        servers=NATS_URLS,
        connect_timeout=3,
        max_reconnect_attempts=1,
        error_cb=_quiet,
        **nats_options(),
    )
    try:
        info = await nc.jetstream(timeout=5).stream_info("SCORES")
        return (info.cluster.leader or "") if info.cluster else ""
    finally:
        await nc.close()


async def haproxy_servers(http: aiohttp.ClientSession) -> list[dict[str, str]]:
    async with http.get(STATS + "/;csv", timeout=aiohttp.ClientTimeout(total=10)) as answer:
        text = await answer.text()
    lines = text.lstrip("# ").splitlines()
    header = lines[0].split(",")
    rows = [dict(zip(header, line.split(","), strict=False)) for line in lines[1:] if line]
    return [r for r in rows if r["pxname"] == "gateways" and r["svname"] not in ("BACKEND",)]


def gateway_containers() -> dict[str, str]:
    """Running gateway container name -> its hostname (the node names' prefix)."""
    names = podman(
        "ps", "--filter", f"label=com.docker.compose.project={PROJECT}",
        "--filter", "label=com.docker.compose.service=gateway", "--format", "{{.Names}}",
    ).split()  # fmt: skip
    return {n: podman("inspect", "-f", "{{.Config.Hostname}}", n) for n in names}


def worker_pids(container: str) -> list[str]:
    """The container's processes whose parent is PID 1, less the
    multiprocessing helper (the supervisor's resource tracker)."""
    tree = podman("top", container, "pid", "ppid", "args")
    return sorted(
        line.split()[0]
        for line in tree.splitlines()[1:]
        if line.split()[1:2] == ["1"] and "multiprocessing" in line and "spawn_main" in line
    )


def container_of(node: str, hosts: dict[str, str]) -> str:
    return next((name for name, host in hosts.items() if node.startswith(host + "-")), "?")


async def final_truth() -> dict[str, tuple[int, Any]]:
    nc = await nats.connect(servers=NATS_URLS, connect_timeout=5, error_cb=_quiet, **nats_options())
    try:
        js = nc.jetstream(timeout=5)
        truth = {}
        for topic in TOPICS:
            message = await js.get_last_msg("SCORES", f"scores.{topic}")
            body = json.loads(message.data)
            truth[topic] = (body["seq"], body["state"])
        return truth
    finally:
        await nc.close()


# --- the drive ---------------------------------------------------------------


async def post_ingest(http: aiohttp.ClientSession, n: int) -> int:
    item = {"topic": INGEST_TOPIC, "kind": "note", "id": f"stack-{n}-{time.time()}",
            "data": {"note": n, "by": "make test-stack"}}  # fmt: skip
    async with http.post(INGEST, json=item, timeout=aiohttp.ClientTimeout(total=15)) as answer:
        body = await answer.json(content_type=None)
        if answer.status != 202:
            raise Failed(f"ingest answered {answer.status}: {body}")
        return body["accepted"][0]["seq"]


async def drive() -> dict[str, Any]:
    figures: dict[str, Any] = {"clients": CLIENTS}
    http = aiohttp.ClientSession()
    clients = [Client(i) for i in range(CLIENTS)]
    tasks: list[asyncio.Task] = []
    try:
        say("waiting for the balancer to admit a WebSocket")

        async def lb_ready():
            async with connect(LB, open_timeout=5) as ws:
                return json.loads(await ws.recv())["type"] == "welcome"

        await until("a WebSocket through HAProxy", lb_ready, 120, 1)
        hosts = gateway_containers()
        if len(hosts) < 2:
            raise Failed(f"expected >= 2 gateway containers, found {hosts}")
        workers = {name: worker_pids(name) for name in hosts}
        for name, pids in workers.items():  # --workers 2, supervisor as PID 1
            if len(pids) != 2:
                raise Failed(f"{name}: expected 2 workers under PID 1, found {pids}")
        await until(
            "both gateways UP in HAProxy",
            lambda: _count_up(http, 2),
            60,
        )
        say(f"gateways {sorted(hosts)} are up; each: supervisor PID 1 + 2 workers")
        # an ingest topic that exists before the clients subscribe
        await post_ingest(http, 0)

        for client in clients:
            tasks.append(asyncio.create_task(client.run()))
            await asyncio.sleep(0.01)
        await asyncio.wait_for(asyncio.gather(*(c.ready.wait() for c in clients)), 120)
        spread: dict[str, int] = {}
        for client in clients:
            container = container_of(client.node, hosts)
            spread[container] = spread.get(container, 0) + 1
        figures["spread"] = spread
        say(f"{CLIENTS} clients subscribed to {len(TOPICS)} topics each; spread {spread}")
        if len([c for c in spread if c != "?"]) < 2:
            raise Failed(f"clients are not spread over two gateways: {spread}")
        events_before = sum(c.events for c in clients)
        await until(
            "events on every client",
            lambda: _all(clients, lambda c: c.events > 0),
            60,
        )
        say(f"events flowing ({sum(c.events for c in clients) - events_before} so far)")

        # --- 2. ingest
        seq = await post_ingest(http, 1)
        await until(
            "the ingest POST on every client",
            lambda: _all(clients, lambda c: c.seq.get(INGEST_TOPIC, 0) >= seq),
            30,
        )
        say(f"ingest POST (seq {seq} of {INGEST_TOPIC}) reached all {CLIENTS} clients")

        # --- 3. Prometheus
        await check_prometheus(http, hosts)

        # --- 4. the stream leader killed
        leader = await until("the SCORES stream leader", lambda: stream_leader(http), 60)
        container = f"{PROJECT}-{leader}-1"
        killed_at = time.monotonic()
        await apodman("kill", container)
        say(f"killed {container}, the SCORES leader; it starts again in 5 s")

        async def restart_later():
            await asyncio.sleep(5)
            if await apodman("inspect", "-f", "{{.State.Running}}", container) != "true":
                await asyncio.to_thread(podman, "start", container)
            say(f"started {container} again")

        restarter = asyncio.create_task(restart_later())
        await until(
            "a fresh event on every client after the leader was killed",
            lambda: _all(clients, lambda c: c.last_event > killed_at + 0.5),
            90,
            0.1,
        )
        figures["recover_s"] = round(time.monotonic() - killed_at, 1)
        await restarter
        new_leader = await until("a SCORES leader", lambda: stream_leader(http), 60)
        figures["new_leader"] = new_leader
        say(
            f"every client had a fresh event {figures['recover_s']}s after the kill; "
            f"leader now {new_leader}"
        )
        await until(
            f"{container} healthy",
            lambda: _healthy(container),
            90,
            1,
        )

        # the workers under PID 1 are the same processes as at the start:
        # none died and was restarted (the crash loop of a worker that took
        # "my parent is PID 1" for "my parent died")
        for name, pids in workers.items():
            if worker_pids(name) != pids:
                raise Failed(f"{name}: workers restarted: {pids} -> {worker_pids(name)}")
        say(f"workers unchanged since the start: {workers}")

        # --- 5. one gateway loses NATS: the alert fires
        await nats_alert(http, hosts, clients)

        # --- 6. one gateway stopped: drain, hints, resume
        await drain_one(http, hosts, clients, figures)

        # --- 7. the end: every client at the stream's final seq and state
        await apodman("stop", "-t", "10", f"{PROJECT}-simulator-1")
        await post_ingest(http, 2)
        await asyncio.sleep(2)
        truth = await final_truth()

        async def converged():
            return all(
                c.seq.get(t) == s and c.state.get(t) == state
                for c in clients
                for t, (s, state) in truth.items()
            )

        await until("every client at the stream's final seq and state", converged, 60)
        figures["final_seqs"] = sum(s for s, _ in truth.values())
        say(f"every client at the final seq and state of all {len(truth)} topics")

        # --- the verdict on delivery
        gaps = [g for c in clients for g in c.gaps]
        skipped = sum(c.skipped for c in clients)
        closes = sum(c.unexpected_closes for c in clients)
        figures.update(
            events=sum(c.events for c in clients),
            gaps=len(gaps),
            skipped=skipped,
            unexpected_closes=closes,
            resumes=sum(c.resumes for c in clients),
        )
        if gaps:
            raise Failed(f"{len(gaps)} gaps, first: {gaps[:5]}")
        if skipped:
            raise Failed(f"resume snapshots skipped {skipped} events")
        return figures
    finally:
        for client in clients:
            client.stop = True
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await http.close()


async def _all(clients: list[Client], predicate) -> bool:
    return all(predicate(c) for c in clients)


async def _count_up(http, n: int) -> bool:
    servers = await haproxy_servers(http)
    return sum(1 for s in servers if s["status"].startswith("UP")) >= n


async def _healthy(container: str) -> bool:
    status = await apodman("inspect", "-f", "{{.State.Health.Status}}", container, check=False)
    return status == "healthy"


async def check_prometheus(http, hosts: dict[str, str]) -> None:
    async def targets_up():
        data = await prom(http, "/api/v1/targets")
        active = data["activeTargets"]
        gateways = {
            t["labels"]["instance"] for t in active if t["labels"]["job"] == "scorecast-gateway"
        }
        return all(t["health"] == "up" for t in active) and gateways == set(hosts) and active

    active = await until("every Prometheus target up", targets_up, 90, 2)
    say(f"Prometheus: {len(active)} targets up, gateway instances {sorted(hosts)}")
    dashboard = json.loads(DASHBOARD.read_text())
    queries = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]

    async def every_panel_answers():
        empty = []
        for query in queries:
            for variable, value in GRAFANA_VARIABLES.items():
                query = query.replace(variable, value)
            data = await prom(http, "/api/v1/query", query=query)
            if not data["result"]:
                empty.append(query)
        return not empty or (setattr(every_panel_answers, "empty", empty) or False)

    try:
        await until("data for every dashboard query", every_panel_answers, 90, 3)
    except Failed:
        empty = getattr(every_panel_answers, "empty", "?")
        raise Failed(f"dashboard queries without data: {empty}") from None
    say(f"Prometheus: all {len(queries)} dashboard queries return data")

    async def rules_evaluated():
        groups = (await prom(http, "/api/v1/rules"))["groups"]
        rules = [r for g in groups for r in g["rules"]]
        bad = [r for r in rules if r.get("health") != "ok"]
        if bad:
            raise Failed(f"rules failing: {[(r['name'], r.get('lastError')) for r in bad]}")
        return rules

    rules = await until("every alert rule evaluated", rules_evaluated, 60, 2)
    say(f"Prometheus: {len(rules)} rules evaluated without error")


def _netns(container: str, *command: str) -> subprocess.CompletedProcess:
    pid = podman("inspect", "-f", "{{.State.Pid}}", container)
    return subprocess.run(
        ["nsenter", "-t", pid, "-n", *command], capture_output=True, text=True, timeout=30
    )


async def nats_alert(http, hosts: dict[str, str], clients: list[Client]) -> None:
    victim = sorted(hosts)[-1]
    rule = ["OUTPUT", "-p", "tcp", "--dport", "4222", "-j", "REJECT", "--reject-with", "tcp-reset"]
    added = _netns(victim, "iptables", "-I", *rule)
    if added.returncode != 0:
        raise Failed(f"iptables in {victim}'s namespace: {added.stderr}")
    try:
        killed = _netns(victim, "ss", "-K", "dport", "=", ":4222")
        if killed.returncode != 0:
            raise Failed(f"ss -K in {victim}'s namespace: {killed.stderr}")
        say(f"{victim} cut off from NATS (both workers): waiting for the alert")

        async def firing():
            alerts = (await prom(http, "/api/v1/alerts"))["alerts"]
            return [
                a for a in alerts
                if a["labels"]["alertname"] == "GatewayNotConnectedToNats"
                and a["labels"].get("instance") == victim and a["state"] == "firing"
            ]  # fmt: skip

        await until(f"GatewayNotConnectedToNats firing for {victim}", firing, 120, 3)
        say(f"alert GatewayNotConnectedToNats is firing for {victim}")
    finally:
        _netns(victim, "iptables", "-D", *rule)
    mark = time.monotonic()
    await until(
        f"{victim}'s clients receiving again",
        lambda: _all(clients, lambda c: c.last_event > mark),
        60,
    )
    say(f"{victim} back on NATS: every client receives again")


async def drain_one(http, hosts: dict[str, str], clients: list[Client], figures: dict) -> None:
    victim = sorted(hosts)[0]
    own = [c for c in clients if container_of(c.node, hosts) == victim]
    say(f"stopping {victim} (SIGTERM: drain) with {len(own)} clients")
    stopper = asyncio.create_task(apodman("stop", "-t", "30", victim))
    stop_sent = time.monotonic()
    evidence: list[str] = []

    seen: dict[str, str] = {}

    async def out_of_haproxy():
        servers = await haproxy_servers(http)
        up = [s for s in servers if s["status"].startswith("UP")]
        for server in servers:
            shown = f"{server['status']} {server['check_status']} {server['check_code']}"
            if not server["status"].startswith("MAINT") and seen.get(server["svname"]) != shown:
                seen[server["svname"]] = shown
                say(f"  HAProxy {server['svname']} ({server['addr']}): {shown}")
            # the /readyz check answered 503 while the container still ran
            readyz_503 = "L7STS" in server["check_status"] and server["check_code"] == "503"
            if readyz_503 and not stopper.done() and not evidence:
                evidence.append(f"{server['svname']} DOWN on /readyz 503")
                figures["readyz_out_s"] = round(time.monotonic() - stop_sent, 1)
        return len(up) == len(hosts) - 1

    await until(f"HAProxy taking {victim} out", out_of_haproxy, 30, 0.25)
    out_after = round(time.monotonic() - stop_sent, 1)
    say(f"HAProxy: {victim} out of the pool {out_after}s after SIGTERM ({evidence or 'by DNS'})")
    if not evidence:  # the log says so too, when a poll came too late
        log = await apodman("logs", f"{PROJECT}-lb-1")
        if re.search(r"is DOWN, reason: Layer7 wrong status, code: 503", log):
            evidence.append("HAProxy's log: DOWN, Layer7 wrong status, code 503")
            figures["readyz_out_s"] = f"<= {out_after}"
    if not evidence:
        raise Failed(f"HAProxy's /readyz check did not take {victim} out while it drained")
    await until(
        f"{victim}'s clients resumed elsewhere",
        lambda: _all(own, lambda c: c.hints >= 1 and container_of(c.node, hosts) != victim),
        60,
    )
    await stopper
    for line in (await apodman("logs", victim)).splitlines():
        if '"drain' in line:
            say(f"  {victim}: {line[:160]}")
    hinted = sum(1 for c in own if c.hints >= 1)
    figures.update(drained=len(own), hinted=hinted)
    say(f"{hinted}/{len(own)} clients of {victim} got a reconnect hint and resumed with since")


def main() -> int:
    try:
        figures = asyncio.run(drive())
    except Failed as failure:
        say(f"FAILED: {failure}")
        return 1
    say("passed")
    print(
        "test-stack figures: "
        f"{figures['clients']} clients over {len(figures['spread'])} gateways "
        f"{figures['spread']}; {figures['events']} events delivered, "
        f"{figures['gaps']} gaps, {figures['skipped']} skipped; "
        f"NATS leader killed: every client had a fresh event {figures['recover_s']}s after "
        f"the kill (leader then {figures['new_leader']}); "
        f"drain: {figures['hinted']}/{figures['drained']} hinted and resumed, HAProxy took "
        f"the gateway out {figures['readyz_out_s']}s after SIGTERM on /readyz 503; "
        f"{figures['resumes']} resumes in all",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
