#!/usr/bin/env bash
# The load benchmark: the PDP against a bare hyper server, same run, same wrk
# settings, on 127.0.0.1 only. One command:
#
#   benches/load.sh
#
# It builds release, installs wrk (Debian) if missing, generates the `large`
# environment (100k users, 1M role assignments), starts the PDP on it and the
# baseline (devkit/src/bin/baseline.rs), and measures:
#   - the headline, pinned (PIN=1, the default on 2+ cores): each server
#     alone on core 0 and wrk (one thread) on core 1, so that figures hold
#     from run to run: /allowed with the generator's mix and with RBAC
#     queries alone at 64 connections against the baseline, bulk checks/s,
#     /user-permissions req/s; then the same servers on both cores:
#   - POST /allowed at 16 and 64 connections: req/s, p50/p99/p99.9, PDP/baseline
#   - the same at 64 connections paced well below saturation (PACE_MS), once
#     each: the latency when neither server is the bottleneck
#   - POST /allowed/bulk (100 checks per request): checks/s, and the
#     baseline on the same bodies (the ceiling); then bodies of one user and
#     action on 100 files each (the SDK's filter_objects), PDP only
#   - POST /user-permissions: req/s
#   - PDP RSS after load, per role assignment (VmRSS)
#   - time to ready from the data file, and from a backup (PDP_BACKUP_DIR)
#   - p99.9 while the snapshot is swapped every second vs without, and the
#     RSS peak during the swaps (VmHWM, reset first) vs steady state
# then prints a summary table. Every loop is bounded; the trap stops what it
# started.
#
# The /allowed and bulk comparisons alternate the two servers for ROUNDS
# rounds (the order flips each round), and the swap comparison alternates
# runs with and without swaps the same way; each reports medians and every
# round's ratio: on a shared host one pair of runs can differ by 20% from
# the next. Beside req/s it reports each server's CPU time per request
# (user + system, from /proc/PID/stat), a cost that depends less on how the
# scheduler shares the cores with wrk.
#
# Knobs (environment): PRESET (large), SEED (7), DURATION (10s), THREADS (2),
# CONNS ("16 64"), PACE_MS (3 ms between a connection's requests in the
# paced run), ROUNDS (3), STARTS (5 starts from the backup), SWAP_TRIGGER
# (sync = POST /sync | sighup = kill -HUP), PDP_BIN (target/release/pdp),
# LOAD_WORK (target/load), LOAD_PDP_PORT (18766), LOAD_BASELINE_PORT (18767),
# SKIP_BUILD=1, QUERIES (20000), PIN (1; 0 skips the pinned headline),
# HEADLINE_ONLY=1 (stop after it), MIMALLOC_ALLOW_THP (0, as deployed).
#
# AB_BIN=path/to/another/pdp compares two builds instead: that binary takes
# the baseline's place (same data, same key, its own port), "base" in the
# output means it, and the run ends after the /allowed and bulk rounds with
# each build's CPU time per request side by side.
set -euo pipefail
cd "$(dirname "$0")/.."

PRESET=${PRESET:-large}
SEED=${SEED:-7}
DURATION=${DURATION:-10s}
THREADS=${THREADS:-2}
CONNS=${CONNS:-"16 64"}
PACE_MS=${PACE_MS:-3}
ROUNDS=${ROUNDS:-3}
STARTS=${STARTS:-5}
SWAP_TRIGGER=${SWAP_TRIGGER:-sync}
PDP_BIN=${PDP_BIN:-target/release/pdp}
GEN_BIN=${GEN_BIN:-target/release/gen}
BASELINE_BIN=${BASELINE_BIN:-target/release/baseline}
WORK=${LOAD_WORK:-target/load}
PDP_PORT_=${LOAD_PDP_PORT:-18766}
BASE_PORT=${LOAD_BASELINE_PORT:-18767}
QUERIES=${QUERIES:-20000}
PIN=${PIN:-1}
(( $(nproc) >= 2 )) && command -v taskset >/dev/null || PIN=0
# wrk's command prefix: pinned to core 1 in the headline.
WRK_PIN=""
KEY=load-test-key
# A closed local port: a PDP that tries to sync fails fast, on this machine.
NO_CONTROL_PLANE=http://127.0.0.1:9

PDP_URL=http://127.0.0.1:$PDP_PORT_
BASE_URL=http://127.0.0.1:$BASE_PORT
DUR_S=${DURATION%s}

PDP_PID=""
BASE_PID=""
SWAP_PID=""
cleanup() {
  for p in $SWAP_PID $PDP_PID $BASE_PID; do
    kill "$p" 2>/dev/null || true
  done
  wait 2>/dev/null || true
}
trap cleanup EXIT INT TERM

log() { printf '[load] %s\n' "$*" >&2; }
now_ms() { echo $(( $(date +%s%N) / 1000000 )); }

declare -A R   # results: R[name.field]

# ---- build, tools, data ------------------------------------------------------
if [[ "${SKIP_BUILD:-0}" != 1 ]]; then
  log "building release (cargo build --release --bin pdp -p pdp-devkit --bin gen --bin baseline)"
  cargo build --release -p pdp --bin pdp -p pdp-devkit --bin gen --bin baseline
fi
if ! command -v wrk >/dev/null; then
  log "installing wrk"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null
fi
for b in "$PDP_BIN" "$GEN_BIN" "$BASELINE_BIN"; do
  [[ -x "$b" ]] || { log "missing $b"; exit 1; }
done

DATA=$WORK/$PRESET-$SEED
ENV_FILE=$DATA/env.json
if [[ ! -s "$ENV_FILE" || ! -s "$DATA/meta.env" || ! -s "$DATA/bulk_filter.jsonl" || ! -s "$DATA/rbac.jsonl" ]]; then
  mkdir -p "$DATA"
  log "generating $PRESET (seed $SEED) into $DATA"
  "$GEN_BIN" --preset "$PRESET" --seed "$SEED" --out "$ENV_FILE" \
    --load-dir "$DATA" --queries "$QUERIES"
fi
ASSIGNMENTS=$(sed -n 's/^ROLE_ASSIGNMENTS=//p' "$DATA/meta.env")
log "environment: $ASSIGNMENTS role assignments; $(cat "$DATA/expected.txt")"

# ---- processes ---------------------------------------------------------------
port_free() { ! curl -s -o /dev/null --max-time 1 "http://127.0.0.1:$1/"; }
port_free "$PDP_PORT_" || { log "port $PDP_PORT_ busy"; exit 1; }
port_free "$BASE_PORT" || { log "port $BASE_PORT busy"; exit 1; }

# wait_ready PID: polls /ready every 10 ms for up to 120 s; prints ms waited.
wait_ready() {
  local pid=$1 t0 i
  t0=$(now_ms)
  for ((i = 0; i < 12000; i++)); do
    kill -0 "$pid" 2>/dev/null || return 1
    if [[ $(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "$PDP_URL/ready") == 200 ]]; then
      echo $(( $(now_ms) - t0 ))
      return 0
    fi
    sleep 0.01
  done
  return 1
}

# start_pdp LOGNAME [VAR=VALUE...]: starts the PDP with the given environment
# (on top of host, port, key, a dead control plane) and sets PDP_PID.
start_pdp() {
  local name=$1; shift
  # The allocator settings of the Dockerfile and the Kubernetes examples
  # (MIMALLOC_ALLOW_THP=1 in the environment measures with huge pages).
  env MIMALLOC_PURGE_DELAY=0 MIMALLOC_ALLOW_THP="${MIMALLOC_ALLOW_THP:-0}" PDP_HOST=127.0.0.1 PDP_PORT="$PDP_PORT_" PDP_API_KEY="$KEY" \
    PDP_CONTROL_PLANE="$NO_CONTROL_PLANE" "$@" "$PDP_BIN" >"$WORK/$name.log" 2>&1 &
  PDP_PID=$!
}

stop_pdp() {
  if [[ -n "$PDP_PID" ]]; then
    kill "$PDP_PID" 2>/dev/null || true
    wait "$PDP_PID" 2>/dev/null || true
    PDP_PID=""
  fi
}

rss_kb() { awk -v f="$2:" '$1 == f {print $2}' "/proc/$1/status"; }

log "starting PDP on $PDP_URL from $ENV_FILE"
BACKUP_DIR=$WORK/backup
rm -rf "$BACKUP_DIR"; mkdir -p "$BACKUP_DIR"; chmod 700 "$BACKUP_DIR"
start_pdp pdp PDP_DATA_FILE="$ENV_FILE" PDP_BACKUP_DIR="$BACKUP_DIR"
if ! READY_FILE_MS=$(wait_ready "$PDP_PID"); then
  log "PDP did not become ready; its log:"; tail -20 "$WORK/pdp.log" >&2; exit 1
fi
log "PDP ready from the data file in ${READY_FILE_MS} ms"

if [[ -n "${AB_BIN:-}" ]]; then
  log "A/B: $PDP_BIN (pdp) against $AB_BIN (base), both on $ENV_FILE"
  env MIMALLOC_PURGE_DELAY=0 MIMALLOC_ALLOW_THP="${MIMALLOC_ALLOW_THP:-0}" PDP_HOST=127.0.0.1 PDP_PORT="$BASE_PORT" PDP_API_KEY="$KEY" \
    PDP_CONTROL_PLANE="$NO_CONTROL_PLANE" PDP_DATA_FILE="$ENV_FILE" "$AB_BIN" >"$WORK/ab.log" 2>&1 &
else
  "$BASELINE_BIN" "$BASE_PORT" >"$WORK/baseline.log" 2>&1 &
fi
BASE_PID=$!
for ((i = 0; i < 12000; i++)); do
  [[ $(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "$BASE_URL/ready") == 200 ]] && break
  sleep 0.01
done

# ---- the answers really mix allow and deny -----------------------------------
ALLOWS=0; DENIES=0; OTHER=0
while IFS= read -r body; do
  out=$(curl -s --max-time 2 -H "Authorization: Bearer $KEY" -H 'Content-Type: application/json' \
    --data-binary "$body" "$PDP_URL/allowed" || true)
  case "$out" in
    *'"allow":true'*) ALLOWS=$((ALLOWS + 1)) ;;
    *'"allow":false'*) DENIES=$((DENIES + 1)) ;;
    *) OTHER=$((OTHER + 1)); [[ $OTHER == 1 ]] && log "unexpected answer: $out" ;;
  esac
done < <(head -n 200 "$DATA/allowed.jsonl")
log "sample of 200 queries: $ALLOWS allow, $DENIES deny, $OTHER other"

# cpu_ticks PID: user + system time of a process so far, in clock ticks.
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat" 2>/dev/null || echo 0; }
CLK_TCK=$(getconf CLK_TCK)

# run_wrk NAME URL BODIES CONNS [PID [PAUSE_MS]]: runs wrk, stores
# R[NAME.rps|p50|p99|p999|errors], and with PID the server's CPU time per
# request in R[NAME.cpu] (microseconds). With PAUSE_MS each connection waits
# that long after an answer before its next request (benches/load/bodies.lua).
run_wrk() {
  local name=$1 url=$2 bodies=$3 conns=$4 pid=${5:-} pause=${6:-} out line t0=0 t1=0 n
  [[ -n "$pid" ]] && t0=$(cpu_ticks "$pid")
  out=$($WRK_PIN wrk -t"$THREADS" -c"$conns" -d"$DURATION" --timeout 5s \
    -s benches/load/bodies.lua "$url" -- "$bodies" "$KEY" $pause 2>&1) || true
  [[ -n "$pid" ]] && t1=$(cpu_ticks "$pid")
  echo "$out" >"$WORK/wrk-$name.txt"
  line=$(grep '^RESULT' <<<"$out" || true)
  if [[ -z "$line" ]]; then
    log "wrk $name failed: $(tail -3 <<<"$out")"; return 0
  fi
  R[$name.rps]=$(sed -E 's/.* rps=([0-9.]+).*/\1/' <<<"$line")
  R[$name.p50]=$(sed -E 's/.* p50_us=([0-9]+).*/\1/' <<<"$line")
  R[$name.p99]=$(sed -E 's/.* p99_us=([0-9]+).*/\1/' <<<"$line")
  R[$name.p999]=$(sed -E 's/.* p999_us=([0-9]+).*/\1/' <<<"$line")
  R[$name.errors]=$(sed -E 's/.* socket_errors=([0-9]+) non2xx=([0-9]+).*/\1+\2/' <<<"$line")
  n=$(sed -E 's/.*requests=([0-9]+).*/\1/' <<<"$line")
  if [[ -n "$pid" ]]; then
    R[$name.cpu]=$(awk -v t=$((t1 - t0)) -v hz="$CLK_TCK" -v n="$n" \
      'BEGIN { if (n > 0) printf "%.1f", t / hz * 1e6 / n; else print "" }')
  fi
  log "$name: ${R[$name.rps]} req/s, p50 ${R[$name.p50]} us, p99 ${R[$name.p99]} us, p99.9 ${R[$name.p999]} us, errors ${R[$name.errors]}${pid:+, server CPU ${R[$name.cpu]} us/request}"
}

# per_round KEY: R[KEY] of every round, one per line, with @ in KEY standing
# for the round number (missing values give empty lines).
per_round() {
  local r
  for ((r = 1; r <= ROUNDS; r++)); do printf '%s\n' "${R[${1/@/$r}]:-}"; done
}

# median VALUES...: the median of numbers (the mean of the middle two for an
# even count); empty values are skipped.
median() {
  printf '%s\n' "$@" | awk 'NF' | sort -g | awk '{ v[NR] = $1 } END {
    if (NR == 0) print ""; else if (NR % 2) print v[(NR + 1) / 2];
    else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

# rounds KEY PATH BODIES CONNS: ROUNDS pairs of runs of the PDP and the
# baseline on the same bodies, flipping which goes first each round, so a
# drift in the host's load favours neither. Stores each round as
# pdp-KEY-N / base-KEY-N, their medians as pdp-KEY / base-KEY, and the
# PDP/baseline ratio of req/s as ratio-KEY-N, its median ratio-KEY and all of
# them, sorted, ratio-KEY.all.
rounds() {
  local key=$1 path=$2 bodies=$3 c=$4 r who order f e errs
  for ((r = 1; r <= ROUNDS; r++)); do
    if ((r % 2)); then order="pdp base"; else order="base pdp"; fi
    for who in $order; do
      if [[ $who == pdp ]]; then
        run_wrk "pdp-$key-$r" "$PDP_URL$path" "$bodies" "$c" "$PDP_PID"
      else
        run_wrk "base-$key-$r" "$BASE_URL$path" "$bodies" "$c" "$BASE_PID"
      fi
    done
    R[ratio-$key-$r]=$(awk -v a="${R[pdp-$key-$r.rps]:-0}" -v b="${R[base-$key-$r.rps]:-0}" \
      'BEGIN { if (a > 0 && b > 0) printf "%.3f", a / b }')
  done
  for who in pdp base; do
    for f in rps p50 p99 p999 cpu; do
      R[$who-$key.$f]=$(median $(per_round "$who-$key-@.$f"))
    done
    errs=0
    for e in $(per_round "$who-$key-@.errors"); do errs=$((errs + ${e%+*} + ${e#*+})); done
    R[$who-$key.errors]=$errs
  done
  R[ratio-$key]=$(median $(per_round "ratio-$key-@"))
  R[ratio-$key.all]=$(per_round "ratio-$key-@" | awk 'NF' | sort -g | paste -sd/ -)
}

# ---- /allowed vs baseline ----------------------------------------------------
log "warm-up"
WARM=$DURATION; DURATION=2s
run_wrk warm-pdp "$PDP_URL/allowed" "$DATA/allowed.jsonl" 16
run_wrk warm-base "$BASE_URL/allowed" "$DATA/allowed.jsonl" 16
DURATION=$WARM

# ---- the headline, pinned ------------------------------------------------------
# pin_servers CPUS: moves every thread of both servers onto CPUS.
pin_servers() {
  local p
  for p in $PDP_PID $BASE_PID; do taskset -a -p -c "$1" "$p" >/dev/null; done
}
if [[ "$PIN" == 1 ]]; then
  log "headline: servers on core 0, wrk (one thread) on core 1"
  pin_servers 0
  SHARED_THREADS=$THREADS; THREADS=1; WRK_PIN="taskset -c 1"
  rounds pin-mix /allowed "$DATA/allowed.jsonl" 64
  rounds pin-rbac /allowed "$DATA/rbac.jsonl" 64
  rounds pin-bulk /allowed/bulk "$DATA/bulk.jsonl" 16
  run_wrk pin-user-perms "$PDP_URL/user-permissions" "$DATA/user_permissions.jsonl" 16 "$PDP_PID"
  PIN_RSS_KB=$(rss_kb "$PDP_PID" VmRSS)
  THREADS=$SHARED_THREADS; WRK_PIN=""
  pin_servers "0-$(( $(nproc) - 1 ))"
  # target TARGET VALUE CMP: "met" or "not met" (CMP ge or le).
  target() { awk -v t="$1" -v v="${2:-}" -v c="$3" 'BEGIN { if (v == "") print "n/a";
    else if ((c == "ge" && v >= t) || (c == "le" && v <= t)) print "met"; else print "not met" }'; }
  PIN_BULK=$(awk -v r="${R[pdp-pin-bulk.rps]:-0}" 'BEGIN { printf "%.0f", r * 100 }')
  PIN_BPA=$(awk -v k="$PIN_RSS_KB" -v n="$ASSIGNMENTS" 'BEGIN { if (n > 0) printf "%.0f", k * 1024 / n }')
  HEADLINE=$(
    echo "== headline, pinned: each server alone on core 0, wrk -t1 on core 1; medians of $ROUNDS alternating rounds of $DURATION =="
    echo "| figure | pdp | bare hyper | pdp/bare | target | |"
    echo "| --- | --- | --- | --- | --- | --- |"
    for k in mix rbac; do
      r=$(awk -v r="${R[ratio-pin-$k]:-}" 'BEGIN { if (r != "") printf "%.2f", r }')
      what=$([[ $k == mix ]] && echo "/allowed, the generator's RBAC/ReBAC/ABAC mix, c=64" || echo "/allowed, RBAC only, c=64")
      t=$([[ $k == mix ]] && echo 0.85 || echo 0.9)
      echo "| $what | ${R[pdp-pin-$k.rps]:-n/a} req/s (${R[pdp-pin-$k.cpu]:-n/a} µs CPU) | ${R[base-pin-$k.rps]:-n/a} req/s (${R[base-pin-$k.cpu]:-n/a} µs) | ${r:-n/a} (rounds ${R[ratio-pin-$k.all]:-n/a}) | ≥ $t× | $(target "$t" "$r" ge) |"
    done
    echo "| /allowed/bulk, 100 checks a request, c=16 | $PIN_BULK checks/s | $(awk -v r="${R[base-pin-bulk.rps]:-0}" 'BEGIN { printf "%.0f", r * 100 }') (the same bodies read) | – | ≥ 2,000,000 | $(target 2000000 "$PIN_BULK" ge) |"
    echo "| /user-permissions, c=16 | ${R[pin-user-perms.rps]:-n/a} req/s | – | – | ≥ 40,000 | $(target 40000 "${R[pin-user-perms.rps]:-}" ge) |"
    echo "| RSS per role assignment after load | $PIN_BPA B ($PIN_RSS_KB kB) | – | – | ≤ 64 B | $(target 64 "$PIN_BPA" le) |"
  )
  echo "$HEADLINE" >"$WORK/headline.md"
  log "headline written to $WORK/headline.md"
  if [[ "${HEADLINE_ONLY:-0}" == 1 ]]; then
    echo; echo "$HEADLINE"; exit 0
  fi
fi
for c in $CONNS; do
  rounds "$c" /allowed "$DATA/allowed.jsonl" "$c"
done
# Off saturation: the same connections, each pausing PACE_MS after an answer,
# so both servers have cores to spare and p99 is not the length of a queue
# (at saturation, Little's law puts the mean at connections / req/s).
PACED_C=${CONNS##* }
run_wrk paced-pdp "$PDP_URL/allowed" "$DATA/allowed.jsonl" "$PACED_C" "$PDP_PID" "$PACE_MS"
run_wrk paced-base "$BASE_URL/allowed" "$DATA/allowed.jsonl" "$PACED_C" "$BASE_PID" "$PACE_MS"

# ---- bulk and user-permissions -----------------------------------------------
# Against the ceiling for bulk: bare hyper reading the same 100-check bodies.
rounds bulk /allowed/bulk "$DATA/bulk.jsonl" 16
if [[ -n "${AB_BIN:-}" ]]; then
  echo
  echo "== A/B: $PDP_BIN (pdp) vs $AB_BIN (base), preset $PRESET seed $SEED, wrk -t$THREADS -d$DURATION, medians of $ROUNDS alternating rounds =="
  printf '%-22s %12s %12s %12s %12s %10s  %s\n' "run" "pdp req/s" "base req/s" "pdp CPU us" "base CPU us" "CPU ratio" "req/s ratio rounds"
  for k in $CONNS bulk; do
    printf '%-22s %12s %12s %12s %12s %10s  %s\n' "$([[ $k == bulk ]] && echo "/allowed/bulk c=16" || echo "/allowed c=$k")" \
      "${R[pdp-$k.rps]:-n/a}" "${R[base-$k.rps]:-n/a}" "${R[pdp-$k.cpu]:-n/a}" "${R[base-$k.cpu]:-n/a}" \
      "$(awk -v a="${R[pdp-$k.cpu]:-0}" -v b="${R[base-$k.cpu]:-0}" 'BEGIN { if (b > 0) printf "%.3f", a / b; else print "n/a" }')" \
      "${R[ratio-$k.all]:-n/a}"
  done
  exit 0
fi
# The SDK's filter_objects shape: one user and action on 100 files a request.
run_wrk bulk-filter "$PDP_URL/allowed/bulk" "$DATA/bulk_filter.jsonl" 16 "$PDP_PID"
run_wrk user-perms "$PDP_URL/user-permissions" "$DATA/user_permissions.jsonl" 16 "$PDP_PID"

RSS_KB=$(rss_kb "$PDP_PID" VmRSS)
log "PDP VmRSS after load: $RSS_KB kB"

# ---- swaps every second ------------------------------------------------------
swaps() {
  curl -s --max-time 2 "$PDP_URL/metrics" | awk '$1 == "pdp_snapshot_swaps" { print $2; f = 1 } END { if (!f) print "" }'
}
swap_once() {
  case "$SWAP_TRIGGER" in
    sighup) kill -HUP "$PDP_PID" ;;
    sync) curl -s -o /dev/null -w '%{http_code}' --max-time 5 -X POST \
            -H "Authorization: Bearer $KEY" "$PDP_URL/sync" ;;
    *) log "SWAP_TRIGGER must be sync or sighup"; return 1 ;;
  esac
}
# Probe: one trigger must lead to one more swap (pdp_snapshot_swaps) within
# 60 s, or the comparison would measure nothing.
SWAP_NOTE=""
S0=$(swaps)
PROBE=$(swap_once 2>&1 || true)
for ((i = 0; i < 600; i++)); do
  kill -0 "$PDP_PID" 2>/dev/null || break
  [[ -n "$S0" && "$(swaps)" != "$S0" ]] && break
  sleep 0.1
done
if ! kill -0 "$PDP_PID" 2>/dev/null; then
  SWAP_NOTE="skipped: the PDP exited on $SWAP_TRIGGER"
elif [[ "$SWAP_TRIGGER" == sync && ! "$PROBE" =~ ^2 ]]; then
  SWAP_NOTE="skipped: POST /sync answered ${PROBE:-nothing}"
elif [[ -z "$S0" ]]; then
  SWAP_NOTE="(unverified: no pdp_snapshot_swaps in /metrics)"
elif [[ "$(swaps)" == "$S0" ]]; then
  SWAP_NOTE="skipped: no swap within 60 s of a $SWAP_TRIGGER"
else
  log "one $SWAP_TRIGGER swapped the snapshot in $((i * 100)) ms"
fi
if [[ "$SWAP_NOTE" == skipped* ]]; then
  log "$SWAP_NOTE"
  if ! kill -0 "$PDP_PID" 2>/dev/null; then
    start_pdp pdp-restarted PDP_DATA_FILE="$ENV_FILE"
    wait_ready "$PDP_PID" >/dev/null || { log "PDP restart failed"; exit 1; }
  fi
else
  SWAP_C=${CONNS##* }
  sleep 2
  STEADY_KB=$(rss_kb "$PDP_PID" VmRSS)
  # Reset the peak so VmHWM shows the swaps alone, not the first load.
  echo 5 >"/proc/$PDP_PID/clear_refs" 2>/dev/null || true
  S1=$(swaps)
  # Rounds with and without swaps alternate like the servers above; after a
  # round with swaps, the reload still building (and one more asked for
  # meanwhile, at most) finishes before the next round.
  for ((r = 1; r <= ROUNDS; r++)); do
    if ((r % 2)); then order="noswap swap"; else order="swap noswap"; fi
    for what in $order; do
      if [[ $what == noswap ]]; then
        run_wrk "noswap-$r" "$PDP_URL/allowed" "$DATA/allowed.jsonl" "$SWAP_C"
        continue
      fi
      (
        for ((s = 0; s < DUR_S; s++)); do swap_once >/dev/null 2>&1 || true; sleep 1; done
      ) &
      SWAP_PID=$!
      run_wrk "swap-$r" "$PDP_URL/allowed" "$DATA/allowed.jsonl" "$SWAP_C"
      kill "$SWAP_PID" 2>/dev/null || true; wait "$SWAP_PID" 2>/dev/null || true; SWAP_PID=""
      last=$(swaps)
      for ((i = 0; i < 10; i++)); do
        sleep 4; now=$(swaps)
        [[ "$now" == "$last" ]] && break
        last=$now
      done
    done
    R[swapratio-$r]=$(awk -v a="${R[swap-$r.p999]:-0}" -v b="${R[noswap-$r.p999]:-0}" \
      'BEGIN { if (a > 0 && b > 0) printf "%.2f", a / b }')
  done
  PEAK_KB=$(rss_kb "$PDP_PID" VmHWM)
  S2=$(swaps)
  for what in swap noswap; do R[$what.p999]=$(median $(per_round "$what-@.p999")); done
  R[swapratio.all]=$(per_round "swapratio-@" | awk 'NF' | sort -g | paste -sd/ -)
  [[ -n "$S1" && -n "$S2" ]] && SWAP_NOTE="($((S2 - S1)) swaps in $ROUNDS runs of $DURATION) $SWAP_NOTE"
  log "swaps: steady $STEADY_KB kB, peak $PEAK_KB kB $SWAP_NOTE"
fi

# ---- start-up from a backup ----------------------------------------------------
# The PDP writes backups after a control-plane sync; a data-file start may not
# write one, so the generator can write it directly when it knows how.
READY_BACKUP=""
GEN_HELP=$("$GEN_BIN" --help 2>&1 || true)
if [[ -z "$(ls -A "$BACKUP_DIR" 2>/dev/null)" ]] && grep -q -- --backup-dir <<<"$GEN_HELP"; then
  "$GEN_BIN" --preset "$PRESET" --seed "$SEED" --backup-dir "$BACKUP_DIR" --api-key "$KEY" \
    >"$WORK/gen-backup.log" 2>&1 || true
fi
if [[ -n "$(ls -A "$BACKUP_DIR" 2>/dev/null)" ]]; then
  # STARTS fresh processes: one start-up is a single noisy sample.
  STARTS_MS=()
  for ((n = 1; n <= STARTS; n++)); do
    stop_pdp
    start_pdp pdp-backup PDP_BACKUP_DIR="$BACKUP_DIR"
    ms=$(wait_ready "$PDP_PID") || break
    STARTS_MS+=("$ms")
  done
  if ((${#STARTS_MS[@]} == STARTS)); then
    sleep 1
    RSS_BACKUP_KB=$(rss_kb "$PDP_PID" VmRSS)
    READY_BACKUP="median $(median "${STARTS_MS[@]}") ms of $STARTS starts ($(printf '%s\n' "${STARTS_MS[@]}" | sort -g | paste -sd/ -) ms; then VmRSS $RSS_BACKUP_KB kB = $(awk -v k="$RSS_BACKUP_KB" -v n="$ASSIGNMENTS" 'BEGIN { if (n > 0) printf "%.0f", k * 1024 / n; else print "n/a" }') B per role assignment, no load)"
  else
    READY_BACKUP="skipped: the PDP did not become ready from $BACKUP_DIR (see $WORK/pdp-backup.log)"
  fi
else
  READY_BACKUP="skipped: no backup in $BACKUP_DIR (the PDP wrote none and gen has no --backup-dir)"
fi

# ---- summary -----------------------------------------------------------------
ratio() { awk -v a="${1:-0}" -v b="${2:-0}" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }'; }
ms() { awk -v u="${1:-}" 'BEGIN { if (u == "") print "n/a"; else printf "%.2f", u / 1000 }'; }
# bulk requests carry 100 checks each
checks() { awk -v r="${1:-0}" 'BEGIN { printf "%.0f", r * 100 }'; }
per_check() { awk -v c="${1:-}" 'BEGIN { if (c == "") print "n/a"; else printf "%.2f", c / 100 }'; }

echo
[[ -n "${HEADLINE:-}" ]] && { echo "$HEADLINE"; echo; }
echo "== load benchmark: preset $PRESET seed $SEED ($ASSIGNMENTS role assignments), wrk -t$THREADS -d$DURATION, $(nproc) cores, shared =="
echo "/allowed, bulk and swaps: medians of $ROUNDS alternating rounds of $DURATION each"
printf '%-26s %12s %9s %9s %9s %10s %14s\n' "run" "req/s" "p50 ms" "p99 ms" "p99.9 ms" "errors" "CPU us/req"
for c in $CONNS; do
  for who in pdp base; do
    n=$who-$c
    printf '%-26s %12s %9s %9s %9s %10s %14s\n' "/allowed $who c=$c" "${R[$n.rps]:-n/a}" \
      "$(ms "${R[$n.p50]:-}")" "$(ms "${R[$n.p99]:-}")" "$(ms "${R[$n.p999]:-}")" "${R[$n.errors]:-n/a}" \
      "${R[$n.cpu]:-n/a}"
  done
  printf '%-26s %12s   (rounds: %s)\n' "  ratio pdp/baseline c=$c" \
    "$(awk -v r="${R[ratio-$c]:-}" 'BEGIN { if (r == "") print "n/a"; else printf "%.2f", r }')" "${R[ratio-$c.all]:-n/a}"
  printf '%-26s %12s\n' "  CPU per request base/pdp" "$(ratio "${R[base-$c.cpu]:-}" "${R[pdp-$c.cpu]:-}")"
done
for who in pdp base; do
  n=paced-$who
  printf '%-26s %12s %9s %9s %9s %10s %14s\n' "/allowed $who c=$PACED_C paced" "${R[$n.rps]:-n/a}" \
    "$(ms "${R[$n.p50]:-}")" "$(ms "${R[$n.p99]:-}")" "$(ms "${R[$n.p999]:-}")" "${R[$n.errors]:-n/a}" \
    "${R[$n.cpu]:-n/a}"
done
printf '%-26s %12s   (one run each, every connection pausing %s ms after an answer)\n' "  p99 pdp/baseline paced" \
  "$(ratio "${R[paced-pdp.p99]:-}" "${R[paced-base.p99]:-}")" "$PACE_MS"
printf '%-26s %12s %9s %9s %9s %10s\n' "run" "req/s" "p50 ms" "p99 ms" "p99.9 ms" "errors"
for who in pdp base; do
  n=$who-bulk
  printf '%-26s %12s %9s %9s %9s %10s\n' "/allowed/bulk $who c=16" "${R[$n.rps]:-n/a}" \
    "$(ms "${R[$n.p50]:-}")" "$(ms "${R[$n.p99]:-}")" "$(ms "${R[$n.p999]:-}")" "${R[$n.errors]:-n/a}"
done
printf '%-26s %12s   (rounds: %s; server CPU %s us per check; baseline %s us, ceiling %s checks/s)\n' "  bulk checks/s" \
  "$(checks "${R[pdp-bulk.rps]:-}")" \
  "$(per_round "pdp-bulk-@.rps" | awk 'NF { printf "%.0f\n", $1 * 100 }' | sort -g | paste -sd/ -)" \
  "$(per_check "${R[pdp-bulk.cpu]:-}")" "$(per_check "${R[base-bulk.cpu]:-}")" "$(checks "${R[base-bulk.rps]:-}")"
printf '%-26s %12s   (one run; server CPU %s us per check)\n' "  one user a request" \
  "$(checks "${R[bulk-filter.rps]:-}")" "$(per_check "${R[bulk-filter.cpu]:-}")"
printf '%-26s %12s %9s %9s %9s %10s\n' "/user-permissions c=16" "${R[user-perms.rps]:-n/a}" \
  "$(ms "${R[user-perms.p50]:-}")" "$(ms "${R[user-perms.p99]:-}")" "$(ms "${R[user-perms.p999]:-}")" "${R[user-perms.errors]:-n/a}"
echo
printf '%-40s %s\n' "answers (sample of 200)" "$ALLOWS allow / $DENIES deny / $OTHER other"
printf '%-40s %s\n' "RSS after load" "$RSS_KB kB = $(awk -v k="$RSS_KB" -v n="$ASSIGNMENTS" 'BEGIN { if (n > 0) printf "%.0f", k * 1024 / n; else print "n/a" }') bytes per role assignment"
printf '%-40s %s\n' "ready from the data file (JSON)" "$READY_FILE_MS ms"
printf '%-40s %s\n' "ready from a backup" "$READY_BACKUP"
if [[ "$SWAP_NOTE" == skipped* ]]; then
  printf '%-40s %s\n' "p99.9 with a swap every second" "$SWAP_NOTE"
else
  printf '%-40s %s ms vs %s ms without = %sx (rounds: %s) %s\n' "p99.9 with a swap every second ($SWAP_TRIGGER)" \
    "$(ms "${R[swap.p999]:-}")" "$(ms "${R[noswap.p999]:-}")" "$(ratio "${R[swap.p999]:-}" "${R[noswap.p999]:-}")" \
    "${R[swapratio.all]:-n/a}" "$SWAP_NOTE"
  printf '%-40s %s\n' "RSS peak during swaps vs steady" "$PEAK_KB kB vs $STEADY_KB kB = $(ratio "$PEAK_KB" "$STEADY_KB")x"
fi
