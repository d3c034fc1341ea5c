#!/usr/bin/env bash
# LMTP ingest of two tandem binaries, runs alternating, in one run: what a
# change costs (or saves) at ingest. Each run starts a fresh node with an
# embedded data dir, adds NUSERS users and delivers COUNT messages of SIZE
# bytes at CONCURRENCY connections (lmtp_load.py from ../shared/tools/peer).
#
#   A_BIN=... B_BIN=... A_LABEL=new B_LABEL=old RUNS=3 COUNT=20000 \
#     CONCURRENCY=64 SIZE=2048 NUSERS=100 benches/ab_ingest.sh
#
# Prints one line per run (lmtp_load.py's summary), then the medians of
# each binary and the ratio of their throughputs. benches/merkle_ingest.sh
# builds its pair and runs this.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SHARED=${SHARED:-$(cd "$ROOT/../shared" && pwd)}
RUNS=${RUNS:-3}
COUNT=${COUNT:-20000}
CONCURRENCY=${CONCURRENCY:-64}
SIZE=${SIZE:-2048}
NUSERS=${NUSERS:-100}
A_LABEL=${A_LABEL:-a}
B_LABEL=${B_LABEL:-b}
OUT=${OUT:-$(mktemp -d /tmp/ab-ingest.XXXXXX)}
mkdir -p "$OUT"
. "$ROOT/benches/lib.sh"
[ "$A_BIN" -ef "$OUT/tandem-$A_LABEL" ] || cp "$A_BIN" "$OUT/tandem-$A_LABEL"
[ "$B_BIN" -ef "$OUT/tandem-$B_LABEL" ] || cp "$B_BIN" "$OUT/tandem-$B_LABEL"

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
  one "$A_LABEL" "$r"
  one "$B_LABEL" "$r"
done
python3 - "$OUT" "$A_LABEL" "$B_LABEL" <<'PY'
import json, glob, statistics, sys
out, a, b = sys.argv[1:4]
def med(label, f):
    return statistics.median(f(json.load(open(p))) for p in sorted(glob.glob(f"{out}/{label}-r*[0-9].json")))
w = max(len(a), len(b), 5)
print(f"{'build':<{w}} {'msg/s':>9} {'p50 ms':>8} {'p99 ms':>8}")
for label in (a, b):
    print(f"{label:<{w}} {med(label, lambda s: s['msgs_per_s']):>9.1f} {med(label, lambda s: s['latency_ms']['p50']):>8.2f} {med(label, lambda s: s['latency_ms']['p99']):>8.2f}")
print(f"{a} / {b} throughput: {med(a, lambda s: s['msgs_per_s']) / med(b, lambda s: s['msgs_per_s']):.3f}   (medians of the runs; raw results in {out})")
PY
