#!/usr/bin/env bash
# What keeping the merkle trees costs at ingest: LMTP deliveries at
# CONCURRENCY connections into a node built as usual and into one built with
# the `bench-skip-merkle` feature (views written without their trees), runs
# alternating, in one run. Release builds of both (PROFILE=devopt: see
# benches/devopt.sh).
#
#   RUNS=3 COUNT=20000 CONCURRENCY=64 SIZE=2048 NUSERS=100 benches/merkle_ingest.sh
#
# Prints one line per run (lmtp_load.py's summary) and the medians
# (benches/ab_ingest.sh runs the pair; RUNS, COUNT, CONCURRENCY, SIZE and
# NUSERS pass through to it, with its defaults).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=${OUT:-$(mktemp -d /tmp/merkle-ingest.XXXXXX)}
mkdir -p "$OUT"

PROFILE=${PROFILE:-release}
. "$ROOT/benches/devopt.sh"
# TREES_BIN and NO_TREES_BIN: binaries built already (e.g. in two target dirs).
if [ -n "${TREES_BIN:-}" ] && [ -n "${NO_TREES_BIN:-}" ]; then
  cp "$NO_TREES_BIN" "$OUT/tandem-no-trees"
  cp "$TREES_BIN" "$OUT/tandem-trees"
else
  build_bench_bins "" --features bench-skip-merkle
  cp "$T" "$OUT/tandem-no-trees"
  build_bench_bins ""
  cp "$T" "$OUT/tandem-trees"
fi

A_BIN=$OUT/tandem-trees B_BIN=$OUT/tandem-no-trees A_LABEL=trees B_LABEL=no-trees OUT=$OUT \
  exec "$ROOT/benches/ab_ingest.sh"
