#!/usr/bin/env bash
# Continuous-backup lag at a steady LMTP rate: one node with `[backup] to`
# a local directory (interval INTERVAL_MS), RATE deliveries/s for SECONDS,
# the lag of each entry from applied to durable in the backup, and the
# backup's object writes per second (run objects; before layout format 3
# segments, packs and manifests; one object
# per body before packs).
#
#   PROFILE=devopt benches/backup_lag.sh                   # 500/s for 20 s
#   PROFILE=release RATE=500 SECONDS_LOAD=60 INTERVAL_MS=1000 benches/backup_lag.sh
#   TANDEM=/path/to/tandem benches/backup_lag.sh           # no build
#
# Prints one line (backup_lag.py); the JSON stays in $OUT.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
RATE=${RATE:-500}
SECONDS_LOAD=${SECONDS_LOAD:-20}
INTERVAL_MS=${INTERVAL_MS:-1000}
SIZE=${SIZE:-4096}
OUT=${OUT:-$(mktemp -d /tmp/backup-lag.XXXXXX)}
. "$ROOT/benches/lib.sh"
. "$ROOT/benches/devopt.sh"
PROFILE=${PROFILE:-release}
if [ -n "${TANDEM:-}" ]; then T=$TANDEM; else build_bench_bins ""; fi
node=$OUT/node
rm -rf "$node" "$OUT/backup"
node_conf "$node" backup-lag
cat >> "$node/tandem.toml" <<TOML
[backup]
to = "$OUT/backup"
interval_ms = $INTERVAL_MS
TOML
"$T" --config "$node/tandem.toml" serve > "$node/serve.log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true; wait $pid 2>/dev/null || true' EXIT
for _ in $(seq 300); do [ -f "$node/data/listen.json" ] && grep -q "lmtp listening" "$node/serve.log" && break; sleep 0.1; done
for i in $(seq 1 10); do
  echo pass | "$T" --config "$node/tandem.toml" user add "user$i" --password-stdin > /dev/null
done
echo "tandem $("$T" --version 2>/dev/null || true) ($PROFILE), rate $RATE/s for $SECONDS_LOAD s, $SIZE-byte bodies, backup interval $INTERVAL_MS ms"
python3 "$ROOT/benches/backup_lag.py" --data "$node/data" --rate "$RATE" --seconds "$SECONDS_LOAD" --size "$SIZE" --json "$OUT/backup_lag.json"
echo "raw results in $OUT"
