#!/usr/bin/env bash
# Real-client test: the official Permit SDKs (Python `permit`, Node `permitio`)
# against the release pdp binary serving tests/fixtures/sdk.json.
#
# Owns the harness only: installs the pinned SDKs (venv under the target dir,
# `npm ci` in tests/sdk), starts the server on a free 127.0.0.1 port, waits for
# /ready, runs both scenario scripts, stops the server. Exits non-zero if
# anything failed. Run from anywhere; paths are resolved from the repo root.
#
# Environment knobs:
#   PDP_BIN           binary to run (default: <target>/release/pdp, built if missing or stale)
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
if [[ -z "${PDP_BIN:-}" ]]; then
  PDP_BIN="$target/release/pdp"
  if [[ "${SDK_SKIP_BUILD:-0}" != 1 ]]; then
    say "cargo build --release --bin pdp"
    cargo build --release --bin pdp >&2
  fi
fi
[[ -x "$PDP_BIN" ]] || { say "no executable at $PDP_BIN"; exit 1; }

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

# --- the server ---------------------------------------------------------------
# A port the kernel just handed out and released; a race with another process
# is possible but harmless (the server fails to bind and /ready never answers).
port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
key="sdk-test-$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')"
url="http://127.0.0.1:$port"
log="$(mktemp -t pdp-sdk-server.XXXXXX.log)"

server_pid=""
stop_server() {
  if [[ -n "$server_pid" ]] && kill -0 "$server_pid" 2>/dev/null; then
    kill -TERM "$server_pid" 2>/dev/null || true
    # Give the drain a few seconds, then insist.
    for _ in $(seq 1 50); do
      kill -0 "$server_pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  fi
  server_pid=""
}
trap 'stop_server; rm -f "$log"' EXIT
trap 'exit 130' INT TERM

say "starting $PDP_BIN on $url with $fixture"
# Only the variables the test means to set: a PDP_* left in the caller's
# environment (a control-plane URL, say) would change what is being tested.
unset_pdp=()
while IFS= read -r name; do unset_pdp+=(-u "$name"); done < <(compgen -e | grep '^PDP_' || true)
env "${unset_pdp[@]}" \
  PDP_DATA_FILE="$fixture" PDP_HOST=127.0.0.1 PDP_PORT="$port" PDP_API_KEY="$key" \
  "$PDP_BIN" >"$log" 2>&1 &
server_pid=$!

deadline=$((SECONDS + ready_timeout))
until [[ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$url/ready" || true)" == 200 ]]; do
  if ! kill -0 "$server_pid" 2>/dev/null; then
    say "server exited before it was ready; its log:"
    cat "$log" >&2
    exit 1
  fi
  if ((SECONDS >= deadline)); then
    say "no 200 from GET /ready within ${ready_timeout}s; server log:"
    cat "$log" >&2
    exit 1
  fi
  sleep 0.2
done
say "ready"

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
  tail -n 50 "$log" >&2
fi
exit "$status"
