#!/bin/bash
# pging.sh LABEL BINARY [http]: PostgreSQL ingest (300,000 readings) or single readings over
# HTTP (100,000, 64 clients) in a fresh schema of the test database, dropped after.
set -u
label=$1; bin=$2; mode=${3:-}
W=${WLB:-/tmp/wlb}; mkdir -p "$W"
S=$(echo "wlb_${label}_$$" | tr -c 'a-z0-9_\n' '_')
psql -q -h 127.0.0.1 -U postgres -d test -c "CREATE SCHEMA $S" >/dev/null
URL="postgres://postgres@127.0.0.1:5432/test?options=-c%20search_path%3D$S"
if [ "$mode" = http ]; then
  "$bin" bench http --store "$URL" --readings "${N:-100000}" --clients 64 --meters 10000 --json 2>/dev/null > "$W/pg-$label.json"
else
  "$bin" bench ingest --store "$URL" --readings "${N:-300000}" --meters 10000 --json 2>/dev/null > "$W/pg-$label.json"
fi
psql -q -h 127.0.0.1 -U postgres -d test -c "DROP SCHEMA $S CASCADE" >/dev/null 2>&1
python3 - "$W/pg-$label.json" "$label" <<'PY'
import json, sys
f = json.load(open(sys.argv[1]))["figures"]
out = {k: f.get(k) for k in ("readings_per_s", "ratio_to_raw")}
if "raw_limit" in f: out["raw"] = f["raw_limit"].get("rows_per_s")
if "cpu" in f: out["cpu_us"] = f["cpu"].get("us_per_reading")
if "latency" in f: out["p99_us"] = f["latency"]["p99_us"]
out["other_cpu"] = f.get("machine_load_during_run", {}).get("other_processes_cpu_seconds")
print(sys.argv[2], out)
PY
