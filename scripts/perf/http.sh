#!/bin/bash
# http.sh LABEL BINARY [bench http options]: N (default 1M) readings from C (default 64)
# keep-alive clients; e.g. C=4 http.sh bulk B --bulk --batch 1000.
set -u
label=$1; bin=$2; shift 2
W=${WLB:-/tmp/wlb}; mkdir -p "$W"
"$bin" bench http --readings "${N:-1000000}" --clients "${C:-64}" --meters 10000 --json "$@" 2>/dev/null > "$W/http-$label.json"
python3 - "$W/http-$label.json" "$label" <<'PY'
import json, sys
f = json.load(open(sys.argv[1]))["figures"]
print(sys.argv[2], f"readings/s={f['readings_per_s']:.0f} p99_us={f['latency']['p99_us']:.0f} "
      f"cpu_us={f['cpu']['us_per_reading']} failed={f['readings_failed']} load={f['machine_load_during_run']}")
PY
