#!/usr/bin/env bash
# Initial sync of a fresh mirror peer against rsync -a (and optionally
# Dovecot's dsync) on the same generated Maildir corpus, in the same run.
#
#   USERS=10 MSGS=10000 benches/initial_sync.sh      # the 100,000-message corpus (~2.9 GB)
#   USERS=10 MSGS=2000  benches/initial_sync.sh      # quicker
#   DSYNC=1 ...                                      # also run ../shared/tools/peer/bench_dsync.sh
#   RUNS=3 ...                                       # timed copies, each from scratch; medians
#   WORK=/tmp/is ...                                 # keep the corpus and node A there; a later
#                                                    # run with the same WORK reuses them
#
# Tandem: the corpus is imported into node A with `tandem import` (not
# timed), then a fresh node B starts and the time from its exec until its
# version vector equals A's is measured. rsync: `rsync -a` of the Maildir tree into an
# empty directory, timed the same way. Each timed copy starts from dropped
# page caches (when root) and its warmed source (see `warm` below).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SHARED=${SHARED:-$(cd "$ROOT/../shared" && pwd)}
USERS=${USERS:-10}; MSGS=${MSGS:-2000}; SEED=${SEED:-1}
. "$ROOT/benches/lib.sh"
PROFILE=release build_tandem
command -v rsync >/dev/null || { apt-get update -qq; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rsync >/dev/null; }
OUT=${WORK:-$(mktemp -d /tmp/initial-sync.XXXXXX)}
mkdir -p "$OUT"
REUSE=0
if [ -f "$OUT/imported" ] && [ "$(cat "$OUT/imported")" = "$USERS $MSGS $SEED" ]; then REUSE=1; fi
rm -rf "$OUT/b" "$OUT/rsync-dst"
if [ $REUSE = 0 ]; then
  rm -rf "$OUT/a" "$OUT/corpus"
  echo "corpus: $USERS users x $MSGS messages in $OUT/corpus"
  python3 "$SHARED/tools/corpus/gen_corpus.py" maildir --out "$OUT/corpus" --users "$USERS" --messages "$MSGS" --seed "$SEED" >/dev/null
fi
bytes=$(du -sb "$OUT/corpus" | cut -f1)

MA=$(udp_port); MB=$(udp_port)
mirror_conf "$OUT/a" sync-a "$MA" "$MB"; mirror_conf "$OUT/b" sync-b "$MB" "$MA"
PA=$(start_node "$OUT/a"); wait_up "$OUT/a"
trap 'kill $PA ${PB:-} 2>/dev/null || true' EXIT
t0=$(date +%s.%N)
if [ $REUSE = 0 ]; then
  for u in $(seq 1 "$USERS"); do
    echo pass | "$T" --config "$OUT/a/tandem.toml" user add "user$u" --password-stdin >/dev/null
    TANDEM_NO_PROGRESS=1 "$T" --config "$OUT/a/tandem.toml" import maildir "$OUT/corpus/user$u/Maildir" --user "user$u" >/dev/null
  done
  echo "$USERS $MSGS $SEED" > "$OUT/imported"
fi
t1=$(date +%s.%N)
want=$(heads "$OUT/a")
# Both sources warm in the page cache, as after a fresh import: node A's
# store for Tandem, the Maildir tree for rsync.
# Page reclaim under a full page cache costs new writes a lot of kernel
# time (rsync here: 12 s after a cache drop, 48 s without), so each timed
# copy starts from dropped caches (when allowed) plus its warmed source.
warm() {
  sync
  if [ -w /proc/sys/vm/drop_caches ]; then echo 3 > /proc/sys/vm/drop_caches; else echo "(cannot drop caches: not root)"; fi
  find "$1" -type f -print0 | xargs -0 cat > /dev/null
}
RESULTS=$OUT/results.txt; : > "$RESULTS"
for run in $(seq 1 "${RUNS:-1}"); do
  if [ -n "${PB:-}" ]; then stop_node "$PB"; PB=; fi   # B of the previous run
  rm -rf "$OUT/b/data" "$OUT/rsync-dst"
  warm "$OUT/a/data"
  # One process starts B and reads its status over the admin API until
  # its heads equal A's (benches/watch_heads.py): no `tandem status` and
  # Python start per poll taking CPU from the two nodes being timed.
  read -r took _ < <(python3 "$ROOT/benches/watch_heads.py" "$T" "$OUT/b/tandem.toml" "$want")
  PB=$(cat "$OUT/b/pid")
  warm "$OUT/corpus"
  sync   # start rsync with no earlier writes still in flight
  t4=$(date +%s.%N)
  rsync -a "$OUT/corpus/" "$OUT/rsync-dst/"
  t5=$(date +%s.%N)
  sync   # rsync does not fsync; Tandem's copy is durable when counted
  t6=$(date +%s.%N)
  echo "$took $t4 $t5 $t6" >> "$RESULTS"
done
python3 - "$bytes" "$USERS" "$MSGS" "$t0" "$t1" "$RESULTS" <<'PY'
import statistics, sys
b, u, m, t0, t1, path = sys.argv[1:]
b, n = int(b), int(u) * int(m)
imp = float(t1) - float(t0)
print(f"{n} messages, {b / 1e6:.0f} MB of Maildir")
if imp > 1: print(f"  tandem import into A   {imp:8.1f} s  ({n / imp:.0f} msg/s)")
rows = []
for line in open(path):
    took, t4, t5, t6 = map(float, line.split())
    rows.append((took, t5 - t4, t6 - t4))
for i, (sync, rs, rsd) in enumerate(rows, 1):
    print(f"  run {i}: tandem {sync:6.1f} s   rsync -a {rs:6.1f} s   rsync -a + sync {rsd:6.1f} s"
          f"   tandem/rsync {sync / rs:.2f} x ({sync / rsd:.2f} x against rsync + sync)")
sync, rs, rsd = (statistics.median(r[k] for r in rows) for k in range(3))
ratio = statistics.median(r[0] / r[1] for r in rows)
ratio_d = statistics.median(r[0] / r[2] for r in rows)
print(f"  medians of {len(rows)} run(s):")
print(f"  tandem initial sync B  {sync:8.1f} s  ({n / sync:.0f} msg/s, {b / 1e6 / sync:.0f} MB/s)")
print(f"  rsync -a               {rs:8.1f} s  ({b / 1e6 / rs:.0f} MB/s)")
print(f"  rsync -a, then sync    {rsd:8.1f} s  ({b / 1e6 / rsd:.0f} MB/s; durable like Tandem's copy)")
print(f"  tandem / rsync         {ratio:8.2f} x the time ({ratio_d:.2f} x against rsync + sync)")
PY
if [ "${DSYNC:-0}" = 1 ]; then
  USERS=$USERS MSGS=$MSGS SEED=$SEED bash "$SHARED/tools/peer/bench_dsync.sh"
  . "$SHARED/tools/peer/dovecot/env.sh"; cat "${BENCH_DIR:-$PEER_DIR/bench}/results.txt"
fi
[ -n "${WORK:-}" ] || echo "work dir: $OUT (remove when done)"
