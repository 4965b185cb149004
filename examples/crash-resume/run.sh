#!/usr/bin/env bash
# Start a run, SIGKILL it mid-step, resume it, and show the attempt log.
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build --release -q
bin=target/release/sluice
db="sqlite://$(mktemp -d)/demo.db"
export SLUICE_RUN_LEASE=2s

"$bin" run examples/crash-resume/flow.yaml --db "$db" &
pid=$!
sleep 2
echo "--- killing sluice (pid $pid) with SIGKILL"
kill -9 "$pid"
wait "$pid" 2>/dev/null || true
run_id=$("$bin" runs list --db "$db" --json | sed -n 's/.*"id": "\(.*\)",/\1/p' | head -n 1)
"$bin" runs show "$run_id" --db "$db"
echo "--- waiting for the lease to expire, then resuming"
sleep 3
"$bin" runs resume "$run_id" --db "$db"
"$bin" runs show "$run_id" --db "$db" --json | grep -E '"(step_id|idempotency_key|attempt)"'
