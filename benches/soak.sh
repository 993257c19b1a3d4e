#!/usr/bin/env bash
# The soak: mixed traffic at a fixed rate for 10 minutes on the
# 1M-assignment environment, while the snapshot is reloaded every 10 s.
# Not part of CI. One command:
#
#   benches/soak.sh
#
# It builds release, generates the `large` environment (as benches/load.sh,
# sharing its cache), starts the PDP on it (on CPU 0 when taskset exists),
# and runs the soak driver (devkit/src/bin/soak.rs, on CPU 1): 70% /allowed,
# 10% bulk, 10% /user-permissions, 10% AuthZEN evaluations, open-loop at
# RATE requests/s; a POST /sync every RELOAD_EVERY s makes the PDP re-read
# and swap its data file, after which 1,000 probe checks must answer as
# they did before the first reload. It reports errors (must be zero),
# p50/p99/p99.9 per minute, VmRSS every 30 s (must be flat) and the
# reloads; exit status 1 on an error or a changed answer.
#
# Knobs (environment): RATE (2000), DURATION (600 s), RELOAD_EVERY (10 s),
# PRESET (large), SEED (7), LOAD_WORK (target/load), SOAK_PORT (18776),
# SKIP_BUILD=1.
set -euo pipefail
cd "$(dirname "$0")/.."

RATE=${RATE:-2000}
DURATION=${DURATION:-600}
RELOAD_EVERY=${RELOAD_EVERY:-10}
PRESET=${PRESET:-large}
SEED=${SEED:-7}
WORK=${LOAD_WORK:-target/load}
PORT=${SOAK_PORT:-18776}
KEY=soak-test-key
URL=http://127.0.0.1:$PORT
log() { echo "soak.sh: $*" >&2; }

if [[ -z "${SKIP_BUILD:-}" ]]; then
  cargo build --release --bin pdp -p pdp
  cargo build --release -p pdp-devkit --bin gen --bin soak
fi
PIN_PDP=(); PIN_LOAD=()
if command -v taskset >/dev/null && [[ $(nproc) -ge 2 ]]; then
  PIN_PDP=(taskset -c 0); PIN_LOAD=(taskset -c 1)
fi

DATA=$WORK/$PRESET-$SEED
if [[ ! -s "$DATA/env.json" || ! -s "$DATA/user_permissions.jsonl" ]]; then
  mkdir -p "$DATA"
  log "generating $PRESET (seed $SEED) into $DATA"
  target/release/gen --preset "$PRESET" --seed "$SEED" --out "$DATA/env.json" \
    --load-dir "$DATA" --queries 20000
fi

PDP_PID=""
cleanup() { [[ -n "$PDP_PID" ]] && kill "$PDP_PID" 2>/dev/null; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM
curl -s -o /dev/null --max-time 1 "$URL/livez" && { log "port $PORT busy"; exit 1; }
env MIMALLOC_PURGE_DELAY=0 MIMALLOC_ALLOW_THP="${MIMALLOC_ALLOW_THP:-0}" PDP_HOST=127.0.0.1 PDP_PORT="$PORT" PDP_API_KEY="$KEY" \
  PDP_DATA_FILE="$DATA/env.json" PDP_LOG_LEVEL=warn \
  "${PIN_PDP[@]}" target/release/pdp >"$WORK/soak-pdp.log" 2>&1 &
PDP_PID=$!
for ((i = 0; i < 1200; i++)); do
  [[ $(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "$URL/ready") == 200 ]] && break
  kill -0 "$PDP_PID" 2>/dev/null || { log "the PDP exited; see $WORK/soak-pdp.log"; exit 1; }
  sleep 0.1
done
log "PDP ready on $URL (pid $PDP_PID); soaking for ${DURATION}s at ${RATE} req/s"
"${PIN_LOAD[@]}" target/release/soak --url "$URL" --key "$KEY" --load-dir "$DATA" \
  --pid "$PDP_PID" --rate "$RATE" --duration "$DURATION" --reload-every "$RELOAD_EVERY" \
  | tee "$WORK/soak-result.txt"
