#!/usr/bin/env bash
# Real-client test: the official Permit SDKs (Python `permit`, Node `permitio`)
# against the release pdp binary, twice:
#   1. serving tests/fixtures/sdk.json from a file: every decision endpoint;
#   2. syncing tests/fixtures/sdk-facts.json from the fake control plane
#      (devkit's fake_control_plane binary, which accepts writes) once an
#      hour, the SDKs writing through the facts proxy
#      (`proxy_facts_via_pdp` / `proxyFactsViaPdp`) and checking at once.
#
# Owns the harness only: installs the pinned SDKs (venv under the target dir,
# `npm ci` in tests/sdk), starts the servers on free 127.0.0.1 ports, waits
# for /ready, runs the scenario scripts, stops the servers. Exits non-zero if
# anything failed. Run from anywhere; paths are resolved from the repo root.
#
# Environment knobs:
#   PDP_BIN           binary to run (default: <target>/release/pdp, built if missing or stale)
#   CP_BIN            the fake control plane (default: <target>/release/fake_control_plane)
#   SDK_SKIP_BUILD=1  do not run `cargo build --release`
#   SDK_ONLY=python|node   run one scenario
#   SDK_READY_TIMEOUT seconds to wait for /ready (default 60)
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
target="${CARGO_TARGET_DIR:-$root/target}"
sdk_dir="$root/tests/sdk"
venv="$target/sdk-venv"
fixture="$root/tests/fixtures/sdk.json"
ready_timeout="${SDK_READY_TIMEOUT:-60}"
only="${SDK_ONLY:-}"

say() { printf 'sdk-run: %s\n' "$*" >&2; }

# --- the binary -------------------------------------------------------------
if [[ "${SDK_SKIP_BUILD:-0}" != 1 ]]; then
  say "cargo build --release --bin pdp --bin fake_control_plane"
  cargo build --release -p pdp --bin pdp -p pdp-devkit --bin fake_control_plane >&2
fi
PDP_BIN="${PDP_BIN:-$target/release/pdp}"
CP_BIN="${CP_BIN:-$target/release/fake_control_plane}"
[[ -x "$PDP_BIN" ]] || { say "no executable at $PDP_BIN"; exit 1; }
[[ -x "$CP_BIN" ]] || { say "no executable at $CP_BIN"; exit 1; }

# --- the clients --------------------------------------------------------------
if [[ -z "$only" || "$only" == python ]]; then
  if [[ ! -x "$venv/bin/python" ]]; then
    say "creating venv $venv"
    python3 -m venv "$venv"
  fi
  # pip is quick when everything is already satisfied.
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$sdk_dir/requirements.txt" >&2
fi
if [[ -z "$only" || "$only" == node ]]; then
  say "npm ci"
  (cd "$sdk_dir" && npm ci --no-audit --no-fund --loglevel=error >&2)
fi

# --- the servers --------------------------------------------------------------
free_port() {
  # A port the kernel just handed out and released; a race with another
  # process is possible but harmless (the server fails to bind, /ready never answers).
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
key="sdk-test-$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')"
logs="$(mktemp -d -t pdp-sdk.XXXXXX)"
pids=()
stop_all() {
  for pid in "${pids[@]}"; do
    if kill -0 "$pid" 2>/dev/null; then
      kill -TERM "$pid" 2>/dev/null || true
      # Give the drain a few seconds, then insist.
      for _ in $(seq 1 50); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
      done
      kill -KILL "$pid" 2>/dev/null || true
      wait "$pid" 2>/dev/null || true
    fi
  done
  pids=()
}
trap 'stop_all; rm -rf "$logs"' EXIT
trap 'exit 130' INT TERM

# start_pdp LOG URL VAR=VALUE...: the pdp with only these PDP_* variables (a
# PDP_* left in the caller's environment would change what is tested), until
# /ready answers 200.
start_pdp() {
  local log="$1" url="$2"
  shift 2
  local unset_pdp=()
  while IFS= read -r name; do unset_pdp+=(-u "$name"); done < <(compgen -e | grep '^PDP_' || true)
  env "${unset_pdp[@]}" PDP_HOST=127.0.0.1 "$@" "$PDP_BIN" >"$log" 2>&1 &
  local pid=$!
  pids+=("$pid")
  local deadline=$((SECONDS + ready_timeout))
  until [[ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$url/ready" || true)" == 200 ]]; do
    if ! kill -0 "$pid" 2>/dev/null; then
      say "server exited before it was ready; its log:"
      cat "$log" >&2
      exit 1
    fi
    if ((SECONDS >= deadline)); then
      say "no 200 from GET $url/ready within ${ready_timeout}s; server log:"
      cat "$log" >&2
      exit 1
    fi
    sleep 0.2
  done
  say "ready: $url"
}

port="$(free_port)"
url="http://127.0.0.1:$port"
say "starting $PDP_BIN on $url with $fixture"
start_pdp "$logs/pdp.log" "$url" PDP_DATA_FILE="$fixture" PDP_PORT="$port" PDP_API_KEY="$key"

# --- the scenarios ------------------------------------------------------------
status=0
if [[ -z "$only" || "$only" == python ]]; then
  "$venv/bin/python" "$sdk_dir/python_scenario.py" "$url" "$key" || status=1
fi
if [[ -z "$only" || "$only" == node ]]; then
  (cd "$sdk_dir" && node node_scenario.mjs "$url" "$key") || status=1
fi
if ((status != 0)); then
  say "FAILED; server log:"
  tail -n 50 "$logs/pdp.log" >&2
fi

# --- the facts proxy ------------------------------------------------------------
# The fake control plane's environment key is fixed; the PDP syncs with it
# and callers present it, as with Permit's PDP.
cp_key=permit_key_env
"$CP_BIN" "$root/tests/fixtures/sdk-facts.json" >"$logs/cp.out" 2>"$logs/cp.log" &
pids+=("$!")
cp_url=""
for _ in $(seq 1 100); do
  cp_url="$(sed -n 's/^listening //p' "$logs/cp.out" | head -n 1)"
  [[ -n "$cp_url" ]] && break
  sleep 0.1
done
[[ -n "$cp_url" ]] || { say "the fake control plane did not start:"; cat "$logs/cp.log" >&2; exit 1; }
say "fake control plane on $cp_url"
facts_port="$(free_port)"
facts_url="http://127.0.0.1:$facts_port"
start_pdp "$logs/pdp-facts.log" "$facts_url" PDP_CONTROL_PLANE="$cp_url" PDP_PORT="$facts_port" \
  PDP_API_KEY="$cp_key" PDP_SYNC_INTERVAL=1h
facts_status=0
if [[ -z "$only" || "$only" == python ]]; then
  "$venv/bin/python" "$sdk_dir/python_scenario.py" --facts "$facts_url" "$cp_key" "$cp_url" || facts_status=1
fi
if [[ -z "$only" || "$only" == node ]]; then
  (cd "$sdk_dir" && node node_scenario.mjs --facts "$facts_url" "$cp_key" "$cp_url") || facts_status=1
fi
if ((facts_status != 0)); then
  say "FAILED (facts proxy); server log:"
  tail -n 50 "$logs/pdp-facts.log" >&2
  status=1
fi
exit "$status"
