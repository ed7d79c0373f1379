#!/bin/bash
# rep.sh LABEL BINARY [STORE]: `bench replay` (the audit) over STORE (default $WLB/p.db).
set -u
label=$1; bin=$2; W=${WLB:-/tmp/wlb}; store=${3:-sqlite://$W/p.db}
"$bin" bench replay --store "$store" --json 2>/dev/null > "$W/rep-$label.json"
python3 - "$W/rep-$label.json" "$label" <<'PY'
import json, sys
f = json.load(open(sys.argv[1]))["figures"]
print(sys.argv[2], f"events={f['events']} events/s={f['events_per_s']:.0f} ratio={f['ratio_to_raw']} "
      f"raw={f['raw_limit']['rows_per_s']:.0f} cpu_us={f['cpu_us_per_event']} rss={f['peak_rss_bytes'] >> 20}MiB clean={f['clean']}")
PY
