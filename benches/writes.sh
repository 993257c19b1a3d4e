#!/usr/bin/env bash
# The load benchmark with writes pending (docs/read-your-writes.md): the same
# PDP API, the same environment and query mix, served with no writes applied
# over the snapshot and with PENDING (10,000) applied, alternately loaded by
# wrk on 127.0.0.1 only. One command:
#
#   benches/writes.sh
#
# Two `writes_bench SERVE=...` processes (devkit/src/bin/writes_bench.rs)
# share core SERVER_CPU; wrk runs on LOAD_CPU and loads one of them at a
# time, ROUNDS rounds, the order flipping each round. Reports each side's
# req/s and server CPU per request (user + system from /proc/PID/stat),
# medians and their ratio, then stops both. Every loop is bounded; the trap
# stops what it started.
#
# Knobs: PRESET (large), PENDING (10000), ROUNDS (5), DURATION (10s),
# CONNS (16), SERVER_CPU (0), LOAD_CPU (1), PORTS ("18780 18781"),
# LOAD_WORK (target/load), SKIP_BUILD=1.
set -euo pipefail
cd "$(dirname "$0")/.."

PRESET=${PRESET:-large}
PENDING=${PENDING:-10000}
ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-10s}
CONNS=${CONNS:-16}
SERVER_CPU=${SERVER_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
read -r PORT_NONE PORT_SOME <<<"${PORTS:-18780 18781}"
WORK=${LOAD_WORK:-target/load}
BIN=target/release/writes_bench
BODIES=$WORK/writes-bodies.jsonl
BENCH=writes
. benches/lib.sh

if [[ "${SKIP_BUILD:-0}" != 1 ]]; then
  cargo build --release -p pdp-devkit --bin writes_bench
fi
need_wrk
mkdir -p "$WORK"

# start PORT PENDING [BODIES]: a server pinned to SERVER_CPU; prints its PID.
start() {
  PRESET="$PRESET" SERVE="$1" PENDING="$2" BODIES="${3:-}" \
    taskset -c "$SERVER_CPU" "$BIN" >"$WORK/writes-$1.log" 2>&1 &
  echo $!
}

log "starting both servers ($PRESET; 0 and $PENDING writes pending)"
PID_NONE=$(start "$PORT_NONE" 0 "$BODIES"); PIDS+=("$PID_NONE")
wait_ready "$PORT_NONE" "$PID_NONE" "$WORK/writes-$PORT_NONE.log"
PID_SOME=$(start "$PORT_SOME" "$PENDING"); PIDS+=("$PID_SOME")
wait_ready "$PORT_SOME" "$PID_SOME" "$WORK/writes-$PORT_SOME.log"

NONE_RPS=(); NONE_CPU=(); SOME_RPS=(); SOME_CPU=()
for ((r = 1; r <= ROUNDS; r++)); do
  for side in $( ((r % 2)) && echo "none some" || echo "some none"); do
    if [[ $side == none ]]; then read -r a b < <(wrk_allowed "$PORT_NONE" "$PID_NONE" "$BODIES" none); NONE_RPS+=("$a"); NONE_CPU+=("$b")
    else read -r a b < <(wrk_allowed "$PORT_SOME" "$PID_SOME" "$BODIES" none); SOME_RPS+=("$a"); SOME_CPU+=("$b"); fi
    log "round $r, $side pending: $a req/s, $b µs CPU per request"
  done
done
nr=$(median "${NONE_RPS[@]}"); nc=$(median "${NONE_CPU[@]}")
sr=$(median "${SOME_RPS[@]}"); sc=$(median "${SOME_CPU[@]}")
echo "| /allowed, $PRESET, c=$CONNS, median of $ROUNDS | req/s | server CPU per request |"
echo "| --- | --- | --- |"
echo "| no writes pending | $nr | $nc µs |"
echo "| $PENDING writes pending | $sr | $sc µs |"
awk -v a="$sr" -v b="$nr" -v c="$sc" -v d="$nc" \
  'BEGIN { printf "| pending / none | %.3f | %.3f |\n", a / b, c / d }'
