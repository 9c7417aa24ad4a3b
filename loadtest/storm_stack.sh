#!/usr/bin/env bash
# A whole storm on this machine: nats-server, one `scorecast gateway --workers N`,
# `scorecast storm` against it (watching the servers' CPU and memory), then
# `scorecast report`. Everything it starts is stopped on exit.
#
#   loadtest/storm_stack.sh OUTDIR [storm flags...]
#
# Environment: GATEWAY_WORKERS (default 6), GATEWAY_PORT (8080), NATS_PORT (4222),
# GATEWAY_FLAGS (extra gateway flags), PYTHON (default .venv/bin/python).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: loadtest/storm_stack.sh OUTDIR [storm flags...]}
shift
python=${PYTHON:-.venv/bin/python}
workers=${GATEWAY_WORKERS:-6}
port=${GATEWAY_PORT:-8080}
nats_port=${NATS_PORT:-4222}
mkdir -p "$out"
store=$(mktemp -d /tmp/scorecast-storm-js.XXXXXX)
pids=()
# each server runs in its own process group (setsid), so stopping it stops its workers too
cleanup() {
    for pid in "${pids[@]}"; do kill -TERM -- "-$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do
        for _ in $(seq 100); do kill -0 -- "-$pid" 2>/dev/null || break; sleep 0.2; done
        kill -KILL -- "-$pid" 2>/dev/null || true
    done
    rm -rf "$store"
}
trap cleanup EXIT

nats_bin=$($python -c 'from scorecast.natsserver import find_nats_server; print(find_nats_server())')
setsid "$nats_bin" -js -sd "$store" -a 127.0.0.1 -p "$nats_port" >"$out/nats.log" 2>&1 &
pids+=($!)
nats_pid=$!
PYTHONPATH=. setsid $python -m scorecast.cli --log-level warning gateway \
    --nats "nats://127.0.0.1:$nats_port" --port "$port" --workers "$workers" \
    ${GATEWAY_FLAGS:-} >"$out/gateway.log" 2>&1 &
pids+=($!)
gateway_pid=$!
# the port is shared by the workers (SO_REUSEPORT): a run of successes in a row
# means every worker answers, not just the first one up
ready=0
for _ in $(seq 300); do
    if curl -sf "http://127.0.0.1:$port/readyz" >/dev/null; then ready=$((ready + 1)); else ready=0; fi
    [ "$ready" -ge $((workers * 8)) ] && break
    sleep 0.1
done
[ "$ready" -ge $((workers * 8)) ] || { echo "gateway not ready" >&2; exit 1; }

PYTHONPATH=. $python -m scorecast.loadtest.storm --url "ws://127.0.0.1:$port/ws" \
    --nats "nats://127.0.0.1:$nats_port" --watch-pids "$gateway_pid,$nats_pid" \
    --output "$out/result.json" "$@" 2>&1 | tee "$out/storm.log"
PYTHONPATH=. $python -m scorecast.loadtest.report "$out/result.json" --png --output "$out/index.html"
