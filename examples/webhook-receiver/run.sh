#!/usr/bin/env bash
# Start the example receiver, register it as an endpoint, run a flow that
# fires po.high_value webhooks, and show what the receiver got.
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build --release -q --bin sluice --example webhook-receiver
bin=target/release/sluice
db="sqlite://$(mktemp -d)/demo.db"
export SLUICE_WEBHOOK_ALLOW=127.0.0.1   # the receiver is local: allow it past the SSRF guard

secret=$("$bin" webhook endpoint add http://127.0.0.1:9000/webhooks --events 'po.*' --db "$db" --json | sed -n 's/.*"secret": "\(.*\)".*/\1/p')
WEBHOOK_SECRET="$secret" target/release/examples/webhook-receiver > /tmp/receiver.out &
receiver=$!
trap 'kill $receiver' EXIT
sleep 1
"$bin" run examples/webhook-receiver/flow.yaml --db "$db" > /dev/null
sleep 1
echo "--- the receiver got:"
cat /tmp/receiver.out
"$bin" webhook messages --db "$db"
