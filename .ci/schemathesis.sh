#!/usr/bin/env bash
# Independent API fuzzing: schemathesis (pinned, from PyPI, in a virtualenv of its own) against
# api.yaml and a live `wattledger serve --demo` on loopback, over a throwaway data folder.
# Every check runs except `positive_data_acceptance` (see docs/RELIABILITY.md, "API fuzzing"),
# and `negative_data_rejection` runs as a wrapper that also reads NDJSON answers line by line:
# no 5xx, every status code, content type, header and body as api.yaml says, schema-violating
# requests refused. Bounded: at most SCHEMATHESIS_MAX_EXAMPLES cases per operation and phase,
# and a wall-clock limit per run. The server is stopped at the end in every case.
#
# Environment: SCHEMATHESIS_MAX_EXAMPLES (default 50), SCHEMATHESIS_SEED (default 1; the
# seed makes a failure reproducible), SCHEMATHESIS_TIME_LIMIT_S (per run, default 150),
# WATTLEDGER_BIN (default: target/debug/wattledger, built if missing).
set -euo pipefail
cd "$(dirname "$0")/.."

SCHEMATHESIS_VERSION=4.32.5
MAX_EXAMPLES="${SCHEMATHESIS_MAX_EXAMPLES:-50}"
SEED="${SCHEMATHESIS_SEED:-1}"
TIME_LIMIT_S="${SCHEMATHESIS_TIME_LIMIT_S:-150}"
VENV="${XDG_CACHE_HOME:-$HOME/.cache}/wattledger-schemathesis-$SCHEMATHESIS_VERSION"

if [ ! -x "$VENV/bin/schemathesis" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q "schemathesis==$SCHEMATHESIS_VERSION"
fi
ST="$VENV/bin/schemathesis"

BIN="${WATTLEDGER_BIN:-target/debug/wattledger}"
if [ ! -x "$BIN" ]; then
  cargo build -q --bin wattledger
fi
BIN="$(realpath "$BIN")"

WORK="$(mktemp -d)"
SERVER_PID=""
stop() {
  if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    for _ in $(seq 1 100); do
      kill -0 "$SERVER_PID" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
  fi
  rm -rf "$WORK"
}
trap stop EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# A key of this run only, so tokens can be minted without touching anyone's data folder.
export WATTLEDGER_JWT_SECRET="schemathesis-$(od -An -N24 -tx1 /dev/urandom | tr -d ' \n')"
unset WATTLEDGER_JWT_PUBLIC_KEY_FILE WATTLEDGER_JWT_PRIVATE_KEY_FILE WATTLEDGER_JWT_ALGORITHM \
  WATTLEDGER_JWT_ISSUER WATTLEDGER_JWT_AUDIENCE WATTLEDGER_STORE WATTLEDGER_LISTEN
STORE="sqlite://$WORK/w.db"
PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
BASE="http://127.0.0.1:$PORT"

(cd "$WORK" && RUST_LOG=warn exec "$BIN" serve --listen "127.0.0.1:$PORT" --store "$STORE" --demo) \
  >"$WORK/serve.log" 2>&1 &
SERVER_PID=$!
for _ in $(seq 1 600); do
  if curl -sf "$BASE/readyz" >/dev/null 2>&1; then break; fi
  if ! kill -0 "$SERVER_PID" 2>/dev/null; then
    echo "schemathesis: wattledger serve exited before it was ready:" >&2
    cat "$WORK/serve.log" >&2
    exit 1
  fi
  sleep 0.2
done
curl -sf "$BASE/readyz" >/dev/null || { echo "schemathesis: the server was not ready in 120 s" >&2; exit 1; }

OPERATOR="$("$BIN" token --role operator --store "$STORE" --ttl 1h)"
AUDITOR="$("$BIN" token --role auditor --store "$STORE" --ttl 1h)"

# NDJSON bodies, which schemathesis cannot make or read by itself: a generated body is one JSON
# value, sent as one line; an answer is held against the one-line schema api.yaml gives. And
# the check that schema-violating requests are refused, taught that an NDJSON answer is always
# 200 with a status per line (api.yaml, POST /v1/readings): there, every line must be refused
# with a 4xx. Every other answer goes to schemathesis's own check unchanged.
cat >"$WORK/wattledger_hooks.py" <<'EOF'
import json

import schemathesis
from schemathesis.specs.openapi.checks import negative_data_rejection

NDJSON = "application/x-ndjson"


def ndjson_lines(response):
    return [json.loads(line) for line in response.content.decode().splitlines() if line.strip()]


@schemathesis.serializer(NDJSON)
def ndjson_request(ctx, value):
    return (json.dumps(value) + "\n").encode()


@schemathesis.deserializer(NDJSON)
def ndjson_response(ctx, response):
    # A generated body is one line, so every answer to POST /v1/readings is one line and is
    # checked whole; a CSV import's answer (a line per reading of the file) by its first line.
    lines = ndjson_lines(response)
    return lines[0] if lines else None


@schemathesis.check
def negative_data_rejection_per_line(ctx, response, case):
    content_type = (response.headers.get("content-type") or [""])[0]
    if response.status_code == 200 and content_type.startswith(NDJSON):
        if case.meta is None or not case.meta.generation.mode.is_negative:
            return None
        accepted = [l for l in ndjson_lines(response) if not (l.get("ok") is False and 400 <= l.get("status", 0) < 500)]
        if accepted:
            raise AssertionError(f"NDJSON lines that violate the schema were not refused: {accepted[:3]}")
        return True
    return negative_data_rejection(ctx, response, case)


EOF
export PYTHONPATH="$WORK${PYTHONPATH:+:$PYTHONPATH}"
export SCHEMATHESIS_HOOKS=wattledger_hooks

common=(
  --url "$BASE"
  --checks all
  --exclude-checks positive_data_acceptance,negative_data_rejection
  --max-examples "$MAX_EXAMPLES"
  --seed "$SEED"
  --workers 1
  --request-timeout 30
  --no-color
)

# schemathesis keeps a cache (.schemathesis/) in its working folder: the temporary one.
SPEC="$PWD/api.yaml"
cd "$WORK"
status=0
# 1. Every operation but the audit, as the operator; the live feed never ends by design
#    (server-sent events), so it is left out.
echo "schemathesis $SCHEMATHESIS_VERSION: every operation as the operator (seed $SEED, $MAX_EXAMPLES examples)"
timeout --signal=INT --kill-after=20 "$TIME_LIMIT_S" \
  "$ST" run "$SPEC" "${common[@]}" -H "Authorization: Bearer $OPERATOR" \
  --exclude-path /v1/events/live --exclude-path /v1/audit || status=$?
# 2. The audit, which only the auditor may read.
echo "schemathesis $SCHEMATHESIS_VERSION: GET /v1/audit as the auditor"
timeout --signal=INT --kill-after=20 "$TIME_LIMIT_S" \
  "$ST" run "$SPEC" "${common[@]}" -H "Authorization: Bearer $AUDITOR" \
  --include-path /v1/audit || status=$?

if [ "$status" -ne 0 ]; then
  echo "schemathesis: FAILED (exit $status); the server's log:" >&2
  tail -n 50 "$WORK/serve.log" >&2
fi
exit "$status"
