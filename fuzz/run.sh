#!/usr/bin/env bash
# Run every fuzz target for SECONDS (default 600) each, from the committed
# seed corpus; prints executions per second and fails on the first crash.
#   bash fuzz/run.sh 600          # the long run
#   bash fuzz/run.sh 15           # what CI runs
# Stable Rust has no nightly toolchain here: RUSTC_BOOTSTRAP=1 lets cargo
# fuzz pass its -Z flags (sanitizer coverage) to the stable compiler.
set -euo pipefail
cd "$(dirname "$0")"
secs=${1:-600}
export RUSTC_BOOTSTRAP=1
export CARGO_TARGET_DIR="${FUZZ_TARGET_DIR:-$HOME/.cache/tandem-fuzz-target}"
if ! command -v cargo-fuzz >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked --version 0.13.2
fi
targets=$(cargo fuzz list)
cargo fuzz build -O --debug-assertions
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
status=0
for t in $targets; do
  mkdir -p "$work/$t"
  log="$work/$t.log"
  if cargo fuzz run -O --debug-assertions "$t" "$work/$t" "corpus/$t" -- \
      -max_total_time="$secs" -rss_limit_mb=2048 -max_len=65536 -print_final_stats=1 >"$log" 2>&1; then
    runs=$(grep -m1 'stat::number_of_executed_units' "$log" | awk '{print $2}')
    rate=$(( ${runs:-0} / (secs > 0 ? secs : 1) ))
    echo "fuzz $t: ${runs:-?} runs in ${secs}s (~${rate}/s), 0 crashes"
  else
    echo "fuzz $t: FAILED" >&2
    tail -n 40 "$log" >&2
    ls artifacts/"$t" 2>/dev/null >&2 || true
    status=1
  fi
done
exit $status
