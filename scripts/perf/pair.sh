#!/bin/bash
# pair.sh LABEL BINARY [bench ingest options]: embedded ingest of N (default 1M) readings over
# 10,000 meters into a fresh $WLB/p.db; prints the figures PERFORMANCE.md's tables quote.
set -u
label=$1; bin=$2; shift 2
W=${WLB:-/tmp/wlb}; mkdir -p "$W"
rm -rf "$W"/p.db*
"$bin" bench ingest --readings "${N:-1000000}" --meters 10000 --store "sqlite://$W/p.db" --json "$@" 2>/dev/null > "$W/last-$label.json"
python3 - "$W/last-$label.json" "$label" <<'PY'
import json, sys
f = json.load(open(sys.argv[1]))["figures"]
print(f"{sys.argv[2]:10s} rps={f['readings_per_s']:9.0f} ratio={f['ratio_to_raw']:.3f} raw={f['raw_limit']['rows_per_s']:9.0f} "
      f"rows/tx={f['raw_limit']['rows_per_tx']} cpu={f['cpu']['us_per_reading']} "
      f"durability_wait={f['driver_us_per_reading']['window_wait_for_durability']} "
      f"rss={f['peak_rss_bytes'] >> 20}MiB steal={f['machine_load_during_run']['steal_seconds']}")
PY
