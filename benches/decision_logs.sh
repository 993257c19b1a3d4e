#!/usr/bin/env bash
# The load benchmark with decision logs (docs/decision-logs.md): /allowed
# on the same environment and queries from four PDPs that differ only in
# their decision log: off, shipping to an ingress that stalls (never
# answers), to one that refuses (503), and to one that accepts. Each PDP
# syncs from its own fake control plane (devkit's fake_control_plane, with
# `--ingress`), on 127.0.0.1 only. One command:
#
#   benches/decision_logs.sh
#
# The PDPs share core SERVER_CPU; wrk and the fakes run on LOAD_CPU, and wrk
# loads one PDP at a time, ROUNDS rounds, the order rotating each round.
# Reports each PDP's req/s and CPU per request (user + system from
# /proc/PID/stat), medians and their ratio to `off`, its RSS after the
# runs, and what its decision log counted (events, shipped, dropped). Every
# loop is bounded; the trap stops what it started.
#
# Knobs: PRESET (large), SEED (7), ROUNDS (3), DURATION (10s), CONNS (64),
# SERVER_CPU (0), LOAD_CPU (1), BASE_PORT (18790: PDPs on BASE_PORT..+3,
# fakes on BASE_PORT+10..+13), LOAD_WORK (target/load), SKIP_BUILD=1.
set -euo pipefail
cd "$(dirname "$0")/.."

PRESET=${PRESET:-large}
SEED=${SEED:-7}
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10s}
CONNS=${CONNS:-64}
SERVER_CPU=${SERVER_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
BASE_PORT=${BASE_PORT:-18790}
WORK=${LOAD_WORK:-target/load}
KEY=permit_key_env
MODES=(off stall refuse accept)

BENCH=decision-logs
. benches/lib.sh

if [[ "${SKIP_BUILD:-0}" != 1 ]]; then
  cargo build --release -p pdp --bin pdp -p pdp-devkit --bin gen --bin fake_control_plane
fi
need_wrk
DATA=$WORK/$PRESET-$SEED
ENV_FILE=$DATA/env.json
if [[ ! -s "$ENV_FILE" || ! -s "$DATA/allowed.jsonl" ]]; then
  mkdir -p "$DATA"
  log "generating $PRESET (seed $SEED) into $DATA"
  target/release/gen --preset "$PRESET" --seed "$SEED" --out "$ENV_FILE" \
    --load-dir "$DATA" --queries 20000
fi

declare -A PDP_PID PORT
# start MODE N: a fake control plane (ingress per MODE) and a PDP syncing
# from it, pinned to SERVER_CPU.
start() {
  local mode=$1 n=$2 fake_port=$((BASE_PORT + 10 + n)) ingress logs=control-plane
  case $mode in
    off) ingress=accept; logs=off ;;
    stall) ingress=stall ;;
    refuse) ingress=503 ;;
    accept) ingress=accept ;;
  esac
  taskset -c "$LOAD_CPU" target/release/fake_control_plane "$ENV_FILE" \
    --port "$fake_port" --ingress "$ingress" >"$WORK/dl-fake-$mode.log" 2>&1 &
  PIDS+=($!)
  PORT[$mode]=$((BASE_PORT + n))
  # Unlimited budget: the sync of the environment is not what is measured.
  env PDP_HOST=127.0.0.1 PDP_PORT="${PORT[$mode]}" PDP_API_KEY=$KEY \
    PDP_CONTROL_PLANE="http://127.0.0.1:$fake_port" PDP_SYNC_INTERVAL=1h \
    PDP_RATE_LIMIT_OVERALL=0 PDP_RATE_LIMIT_FACTS=0 PDP_RATE_LIMIT_SCHEMA=0 \
    PDP_DECISION_LOGS=$logs PDP_LOG_LEVEL=warn \
    taskset -c "$SERVER_CPU" target/release/pdp >"$WORK/dl-pdp-$mode.log" 2>&1 &
  PDP_PID[$mode]=$!
  PIDS+=($!)
}
n=0
for mode in "${MODES[@]}"; do
  log "starting the PDP with decision logs: $mode"
  start "$mode" $n
  n=$((n + 1))
  wait_ready "${PORT[$mode]}" "${PDP_PID[$mode]}" "$WORK/dl-pdp-$mode.log" 600
done

declare -A RPS CPU
for ((r = 0; r < ROUNDS; r++)); do
  for ((i = 0; i < ${#MODES[@]}; i++)); do
    mode=${MODES[$(((i + r) % ${#MODES[@]}))]}
    read -r a b < <(wrk_allowed "${PORT[$mode]}" "${PDP_PID[$mode]}" "$DATA/allowed.jsonl" "$KEY")
    RPS[$mode]+="$a "; CPU[$mode]+="$b "
    log "round $((r + 1)), $mode: $a req/s, $b µs CPU per request"
  done
done

metric() { curl -s "http://127.0.0.1:${PORT[$1]}/metrics" | awk -v m="$2" '$1 == m { v = $2 } END { print (v == "" ? "–" : v) }'; }
rss_mb() { awk '/^VmRSS/ { printf "%.0f", $2 / 1024 }' "/proc/${PDP_PID[$1]}/status"; }

# shellcheck disable=SC2086
{
  off_rps=$(median ${RPS[off]}); off_cpu=$(median ${CPU[off]})
  echo "| /allowed, $PRESET, c=$CONNS, median of $ROUNDS | req/s | ×off | CPU per request | ×off | RSS | events | shipped | dropped (buffer_full) |"
  echo "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"
  for mode in "${MODES[@]}"; do
    rps=$(median ${RPS[$mode]}); cpu=$(median ${CPU[$mode]})
    printf '| %s | %s | %s | %s µs | %s | %s MB | %s | %s | %s |\n' "$mode" "$rps" \
      "$(ratio "$rps" "$off_rps")" "$cpu" \
      "$(ratio "$cpu" "$off_cpu")" "$(rss_mb "$mode")" \
      "$(metric "$mode" pdp_decision_log_events_total)" "$(metric "$mode" pdp_decision_log_shipped_total)" \
      "$(metric "$mode" 'pdp_decision_log_dropped_total{reason="buffer_full"}')"
  done
}
