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
# each server runs in its own process group (setsid), so stopping it stops its
# workers too; the last started stops first (the gateway before its nats-server)
cleanup() {
    for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
        pid=${pids[$i]}
        kill -TERM -- "-$pid" 2>/dev/null || true
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
# the port is shared by the workers (SO_REUSEPORT): ready once /metrics counts
# every worker (each writes its figures once a second) and all of them are on
# NATS; 30 workers starting at once on 2 cores take a while
ready=""
for _ in $(seq 900); do
    figures=$(curl -sf "http://127.0.0.1:$port/metrics" 2>/dev/null || true)
    up=$(echo "$figures" | awk '$1 == "scorecast_workers" {print int($2)}')
    nats=$(echo "$figures" | awk '$1 == "scorecast_nats_connected_workers" {print int($2)}')
    if [ "${up:-0}" -ge "$workers" ] && [ "${nats:-0}" -ge "$workers" ]; then ready=yes; break; fi
    sleep 0.2
done
[ -n "$ready" ] || { echo "gateway not ready: ${up:-0} of $workers workers reporting" >&2; exit 1; }

# the storm's own topics (storm.1 ..) unless the flags say otherwise; its
# defaults are scorecast dev's matches
PYTHONPATH=. $python -m scorecast.loadtest.storm --url "ws://127.0.0.1:$port/ws" \
    --nats "nats://127.0.0.1:$nats_port" --watch-pids "$gateway_pid,$nats_pid" \
    --topic-prefix storm. --topic-first 1 --topics 100 --publish-rate 10 \
    --output "$out/result.json" "$@" 2>&1 | tee "$out/storm.log"
PYTHONPATH=. $python -m scorecast.loadtest.report "$out/result.json" --png --output "$out/index.html"
