#!/bin/bash
# serveload.sh BINARY STORE FIRST COUNT [STEP]: starts `serve` on STORE (a log that
# `bench ingest --meters 10000` wrote), times its readiness, then posts readings FIRST ..
# FIRST+COUNT with load.py (4 clients, NDJSON bodies of 1,000), STEP at a time (default all),
# printing VmHWM/VmRSS after its start and after each step; then SIGTERM and its exit code.
set -u
bin=$1; store=$2; first=$3; count=$4; step=${5:-$4}
here=$(dirname "$0"); W=${WLB:-/tmp/wlb}; mkdir -p "$W"
t0=$(date +%s.%N)
RUST_LOG=warn "$bin" serve --store "$store" --listen 127.0.0.1:18080 > "$W/serve.out" 2>&1 &
pid=$!
for _ in $(seq 1 2400); do
  curl -sf http://127.0.0.1:18080/healthz >/dev/null 2>&1 && break
  sleep 0.05
done
echo "ready_s=$(echo "$(date +%s.%N) - $t0" | bc) $(grep -E 'VmHWM|VmRSS' /proc/$pid/status | tr -s ' \t\n' ' ')"
TOKEN=$("$bin" token --role operator --store "$store")
for ((a = first; a < first + count; a += step)); do
  python3 "$here/load.py" http://127.0.0.1:18080 "$TOKEN" "$a" "$step" 10000 | tr '\n' ' '
  echo "after $((a + step - first)): $(grep -E 'VmHWM|VmRSS' /proc/$pid/status | tr -s ' \t\n' ' ')"
done
kill -TERM $pid; wait $pid; echo "exit=$?"
