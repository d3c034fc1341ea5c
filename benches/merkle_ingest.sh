#!/usr/bin/env bash
# What keeping the merkle trees costs at ingest: LMTP deliveries at
# CONCURRENCY connections into a node built as usual and into one built with
# the `bench-skip-merkle` feature (views written without their trees), runs
# alternating, in one run. Release builds of both (PROFILE=devopt: see
# benches/devopt.sh).
#
#   RUNS=3 COUNT=20000 CONCURRENCY=64 SIZE=2048 NUSERS=100 benches/merkle_ingest.sh
#
# Prints one line per run (lmtp_load.py's summary) and the medians.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SHARED=${SHARED:-$(cd "$ROOT/../shared" && pwd)}
RUNS=${RUNS:-3}
COUNT=${COUNT:-20000}
CONCURRENCY=${CONCURRENCY:-64}
SIZE=${SIZE:-2048}
NUSERS=${NUSERS:-100}
OUT=${OUT:-$(mktemp -d /tmp/merkle-ingest.XXXXXX)}
mkdir -p "$OUT"
. "$ROOT/benches/lib.sh"

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

PID=
trap 'kill $PID 2>/dev/null || true' EXIT
one() { # label run
  local bin=$OUT/tandem-$1 dir=$OUT/$1-r$2
  T=$bin
  node_conf "$dir" bench
  PID=$(start_node "$dir")
  wait_up "$dir"
  for i in $(seq 1 "$NUSERS"); do echo pass | "$bin" --config "$dir/tandem.toml" user add "user$i" --password-stdin >/dev/null; done
  local port
  port=$("$bin" --config "$dir/tandem.toml" status --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["listeners"]["lmtp"].rsplit(":",1)[1])')
  python3 "$SHARED/tools/peer/lmtp_load.py" --port "$port" --users 'user%d@localhost' --nusers "$NUSERS" \
    --count "$COUNT" --concurrency "$CONCURRENCY" --size "$SIZE" --max-seconds 600 --label "$1" --json "$OUT/$1-r$2.json" | tail -n 1
  "$bin" --config "$dir/tandem.toml" status --json > "$OUT/$1-r$2-status.json"
  stop_node "$PID"
  rm -rf "$dir/data"
}
for r in $(seq 1 "$RUNS"); do
  one trees "$r"
  one no-trees "$r"
done
python3 - "$OUT" <<'PY'
import json, glob, statistics, sys
out = sys.argv[1]
def med(label, f):
    return statistics.median(f(json.load(open(p))) for p in sorted(glob.glob(f"{out}/{label}-r*[0-9].json")))
t, n = med("trees", lambda s: s["msgs_per_s"]), med("no-trees", lambda s: s["msgs_per_s"])
print(f"{'build':<10} {'msg/s':>9} {'p50 ms':>8} {'p99 ms':>8}")
for label in ("trees", "no-trees"):
    print(f"{label:<10} {med(label, lambda s: s['msgs_per_s']):>9.1f} {med(label, lambda s: s['latency_ms']['p50']):>8.2f} {med(label, lambda s: s['latency_ms']['p99']):>8.2f}")
print(f"trees / no trees throughput: {t / n:.3f}   (medians of the runs; raw results in {out})")
PY
