# Helpers shared by the load scripts in benches/, sourced after `set -euo
# pipefail` with BENCH (the log prefix), WORK, CONNS, DURATION and LOAD_CPU
# set. Every loop here is bounded.

log() { printf '[%s] %s\n' "$BENCH" "$*" >&2; }

# Processes started by the script, stopped on exit.
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT INT TERM

need_wrk() {
  command -v wrk >/dev/null && return 0
  log "installing wrk"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null
}

# wait_ready PORT PID LOGFILE [SECONDS]: until /ready answers 200, or the
# process exits (its log's tail is shown), or SECONDS (300) pass.
wait_ready() {
  local port=$1 pid=$2 logfile=$3 tries=$((${4:-300} * 10)) i
  for ((i = 0; i < tries; i++)); do
    kill -0 "$pid" 2>/dev/null || { log "server on $port exited:"; tail -5 "$logfile" >&2; exit 1; }
    [[ $(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "http://127.0.0.1:$port/ready") == 200 ]] && return 0
    sleep 0.1
  done
  log "server on $port not ready in $((tries / 10)) s"; exit 1
}

cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
HZ=$(getconf CLK_TCK)

# wrk_allowed PORT PID BODIES KEY: one wrk run of /allowed on LOAD_CPU with
# the bodies of a .jsonl file; prints "rps server_cpu_us_per_request".
wrk_allowed() {
  local port=$1 pid=$2 t0 t1 out line n rps
  t0=$(cpu_ticks "$pid")
  out=$(taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" -d"$DURATION" --timeout 5s \
    -s benches/load/bodies.lua "http://127.0.0.1:$port/allowed" -- "$3" "$4" 2>&1) || true
  t1=$(cpu_ticks "$pid")
  line=$(grep '^RESULT' <<<"$out") || { log "wrk failed: $(tail -3 <<<"$out")"; echo "0 0"; return; }
  n=$(sed -E 's/.*requests=([0-9]+).*/\1/' <<<"$line")
  rps=$(sed -E 's/.* rps=([0-9.]+).*/\1/' <<<"$line")
  awk -v r="$rps" -v t=$((t1 - t0)) -v hz="$HZ" -v n="$n" 'BEGIN { printf "%.0f %.2f\n", r, t / hz * 1e6 / n }'
}

median() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", a / b }'; }
