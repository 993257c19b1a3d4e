#!/usr/bin/env bash
# Runs every fuzz target (or those named) for SECONDS each (600), one after
# the other, then prints each one's executions and crashes. Documented in
# docs/fuzzing.md; not part of CI.
#
#   fuzz/run.sh                       # all four, 10 minutes each
#   SECONDS_EACH=60 fuzz/run.sh requests backup
#
# Needs cargo-afl (`cargo install cargo-afl && cargo afl config --build`).
# Findings land in fuzz/out/TARGET/default/{crashes,hangs}; each crash
# becomes a regression test (tests/integration/fuzz_regressions.rs).
set -euo pipefail
cd "$(dirname "$0")"
SECONDS_EACH=${SECONDS_EACH:-600}
TARGETS=("$@")
[[ ${#TARGETS[@]} -gt 0 ]] || TARGETS=(requests document backup conditions)

cargo afl build --release
for t in "${TARGETS[@]}"; do
  mkdir -p out
  # -V: stop after that many seconds. The environment skips the checks of
  # the host's CPU governor and core_pattern, which a container cannot set,
  # and leaves the cores unpinned (a benchmark may have pinned them).
  AFL_SKIP_CPUFREQ=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1 AFL_NO_UI=1 AFL_NO_AFFINITY=1 \
    cargo afl fuzz -i "seeds/$t" -o "out/$t" -V "$SECONDS_EACH" "target/release/$t" \
    >"out/$t.log" 2>&1 || { echo "$t: afl-fuzz failed, see fuzz/out/$t.log"; exit 1; }
done
printf '%-12s %14s %10s %8s %8s %10s\n' target executions execs/s crashes hangs corpus
for t in "${TARGETS[@]}"; do
  s=out/$t/default/fuzzer_stats
  v() { awk -F' *: *' -v k="$1" '$1 == k {print $2}' "$s"; }
  printf '%-12s %14s %10s %8s %8s %10s\n' "$t" "$(v execs_done)" "$(v execs_per_sec)" \
    "$(v saved_crashes)" "$(v saved_hangs)" "$(v corpus_count)"
done
