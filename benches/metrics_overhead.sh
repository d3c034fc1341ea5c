#!/usr/bin/env bash
# Cost of the metrics: the same LMTP load against this commit built with
# the `bench-no-metrics` feature (BASE: counters and histograms record
# nothing, no /metrics listener) and built as shipped (NEW: the /metrics
# listener on and scraped every second), alternating in one run; then the
# scrape time of /metrics with USERS accounts.
#
#   PROFILE=devopt benches/metrics_overhead.sh      # builds both binaries
#   PROFILE=release ROUNDS=5 COUNT=2000 CONC=16 USERS=1000 benches/metrics_overhead.sh
#   BASE=/path/to/tandem NEW=/path/to/tandem benches/metrics_overhead.sh
#
# Prints one line per load run, the medians and their ratio, and the median
# and p90 scrape time. Raw lmtp_load.py JSON stays in $OUT.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SHARED=${SHARED:-$(cd "$ROOT/../shared" && pwd)}
ROUNDS=${ROUNDS:-5}
COUNT=${COUNT:-2000}
CONC=${CONC:-16}
USERS=${USERS:-1000}
SCRAPES=${SCRAPES:-30}
OUT=${OUT:-$(mktemp -d /tmp/metrics-bench.XXXXXX)}
mkdir -p "$OUT"
. "$ROOT/benches/lib.sh"
. "$ROOT/benches/devopt.sh"
PROFILE=${PROFILE:-release}
if [ -z "${BASE:-}" ]; then
  build_bench_bins "" --features bench-no-metrics
  cp "$T" "$OUT/tandem-no-metrics"
  BASE=$OUT/tandem-no-metrics
fi
if [ -z "${NEW:-}" ]; then
  build_bench_bins ""
  cp "$T" "$OUT/tandem-metrics"
  NEW=$OUT/tandem-metrics
fi
echo "base (no metrics): $BASE; new: $NEW; profile $PROFILE"

pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true' EXIT

# start BIN DIR ID [extra toml]: start a node, wait for LMTP, add 10 users.
start() {
  node_conf "$2" "$3"
  printf '%s' "${4:-}" >> "$2/tandem.toml"
  "$1" --config "$2/tandem.toml" serve > "$2/serve.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 200); do grep -q "lmtp listening" "$2/serve.log" && break; sleep 0.1; done
  for i in $(seq 1 10); do
    echo pass | "$1" --config "$2/tandem.toml" user add "user$i" --password-stdin > /dev/null
  done
}
lmtp_port() { sed -n 's/.*lmtp listening on 127.0.0.1:\([0-9]*\).*/\1/p' "$1/serve.log"; }

echo "tok-$RANDOM-$RANDOM" > "$OUT/token"
start "$BASE" "$OUT/base" base
start "$NEW" "$OUT/new" new "[metrics]
listen = \"127.0.0.1:0\"
bearer_token_file = \"$OUT/token\"
"
murl=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["metrics"])' "$OUT/new/data/listen.json")/metrics
auth="Authorization: Bearer $(cat "$OUT/token")"
# A scraper at 1 s, as a busy Prometheus would.
( while sleep 1; do curl -sf -H "$auth" "$murl" > /dev/null || true; done ) &
pids+=($!)

base_pid=${pids[0]}
new_pid=${pids[1]}
# CPU time (user + system, clock ticks) of a process: less disturbed by
# other work on the machine than throughput is.
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
load() { # label port round
  local pid=$base_pid
  [ "$1" = new ] && pid=$new_pid
  local t0; t0=$(ticks "$pid")
  python3 "$SHARED/tools/peer/lmtp_load.py" --port "$2" --users 'user%d@localhost' --nusers 10 \
    --count "$COUNT" --concurrency "$CONC" --max-seconds 300 --label "$1" --json "$OUT/$1-r$3.json" | tail -n 1
  echo $(( $(ticks "$pid") - t0 )) > "$OUT/$1-r$3.ticks"
}
for r in $(seq 1 "$ROUNDS"); do
  # Alternate which goes first, so neither always runs on a warmer machine.
  if [ $((r % 2)) = 1 ]; then load base "$(lmtp_port "$OUT/base")" "$r"; load new "$(lmtp_port "$OUT/new")" "$r";
  else load new "$(lmtp_port "$OUT/new")" "$r"; load base "$(lmtp_port "$OUT/base")" "$r"; fi
done
python3 - "$OUT" <<'PY'
import json, glob, statistics, sys
out = sys.argv[1]
def rates(label):
    return [json.load(open(p))["msgs_per_s"] for p in sorted(glob.glob(f"{out}/{label}-r*.json"))]
b, n = rates("base"), rates("new")
print(f"base msgs/s {['%.0f' % x for x in b]} median {statistics.median(b):.1f}")
print(f"new  msgs/s {['%.0f' % x for x in n]} median {statistics.median(n):.1f}")
def ticks(label):
    return [int(open(p).read()) for p in sorted(glob.glob(f"{out}/{label}-r*.ticks"))]
tb, tn = ticks("base"), ticks("new")
print(f"daemon CPU ticks per run: base {tb} median {statistics.median(tb)}, new {tn} median {statistics.median(tn)}; "
      f"new/base CPU ratio {sum(tn) / sum(tb):.4f} (totals), {statistics.median(tn) / statistics.median(tb):.4f} (medians)")
print(f"new/base throughput ratio {statistics.median(n) / statistics.median(b):.4f} (of medians); "
      f"per round {['%.3f' % (y / x) for x, y in zip(b, n)]}, median {statistics.median(y / x for x, y in zip(b, n)):.4f}")
PY

# Scrape time with USERS accounts (10 exist already).
for i in $(seq 11 "$USERS"); do
  echo pass | "$NEW" --config "$OUT/new/tandem.toml" user add "user$i" --password-stdin > /dev/null
done
for _ in $(seq "$SCRAPES"); do
  curl -sf -o /dev/null -w '%{time_total}\n' -H "$auth" "$murl"
done > "$OUT/scrape.txt"
users=$(curl -sf -H "$auth" "$murl" | sed -n 's/^tandem_users //p')
bytes=$(curl -sf -H "$auth" "$murl" | wc -c)
python3 - "$OUT/scrape.txt" "$users" "$bytes" <<'PY'
import statistics, sys
t = sorted(float(x) * 1000 for x in open(sys.argv[1]))
print(f"scrape of /metrics with {sys.argv[2]} users ({sys.argv[3]} bytes): median {statistics.median(t):.2f} ms, p90 {t[int(len(t) * 0.9) - 1]:.2f} ms, max {t[-1]:.2f} ms over {len(t)}")
PY
echo "raw results in $OUT"
