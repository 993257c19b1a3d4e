#!/usr/bin/env bash
# The fleet benchmark (docs/fleet.md), in one command:
#
#   benches/fleet.sh
#
# A hub and FOLLOWERS (10) follower processes on the 1M-assignment
# environment, on 127.0.0.1 only: write propagation (WRITES, 100), the
# hub's bytes per follower per write, its CPU with POLLERS (100) more
# long-polling clients over IDLE_SECS (60), and the control plane's
# requests over WINDOW_SECS (600) from the fleet against one lone PDP
# (SYNC_INTERVAL, 60s). The driver is devkit/src/bin/fleet_bench.rs; it
# kills what it started and bounds every wait. About 15 minutes with the
# defaults; PRESET=medium WINDOW_SECS=120 for a quick look.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ "${SKIP_BUILD:-0}" != 1 ]]; then
  cargo build --release -p pdp --bin pdp -p pdp-devkit --bin fleet_bench
fi
exec target/release/fleet_bench
