#!/usr/bin/env bash
# Restore of a whole node from a directory backup against `rsync -a` of the
# same Maildir corpus, in the same run; then a point-in-time restore of one
# big folder on the running node (`tandem restore --user U --folder F --at T`).
#
#   USERS=10 MSGS=10000 RUNS=3 benches/restore_vs_rsync.sh     # the 100,000-message corpus (~2.9 GB)
#   USERS=2 MSGS=5000 RUNS=3 PITR_MSGS=10000 benches/restore_vs_rsync.sh
#   TANDEM=/path/tandem REPLAY=/path/tandem-replay ...         # no build
#   WORK=/tmp/rr ...                                           # keep corpus, node and backup there
#
# Not timed: the corpus is generated (gen_corpus.py), imported into a node
# with `tandem import`, and backed up into a directory with `tandem backup`
# (its time is printed). Timed, RUNS times, each from dropped page caches
# (when root) and its warmed source, as initial_sync.sh does: `tandem-replay
# restore --from BACKUP --data-dir NEW` (durable when it returns) and
# `rsync -a` of the Maildir tree (then `sync`, to be durable too). PITR: an
# mbox of PITR_MSGS messages is imported into a new folder `BigS` of user
# `pitr`, the instant T is taken a second later, and `tandem restore --user
# pitr --folder BigS --at T --into RS-N` is timed RUNS times on the running
# node (each run makes one more copy; the folder stays).
# Prints each run and the medians.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SHARED=${SHARED:-${TANDEM_SHARED:-/work/shared}}
USERS=${USERS:-10}; MSGS=${MSGS:-10000}; SEED=${SEED:-1}; RUNS=${RUNS:-3}; PITR_MSGS=${PITR_MSGS:-10000}
. "$ROOT/benches/lib.sh"
. "$ROOT/benches/devopt.sh"
PROFILE=${PROFILE:-release}
if [ -n "${TANDEM:-}" ]; then T=$TANDEM; else build_bench_bins ""; fi
if [ -n "${REPLAY:-}" ]; then R=$REPLAY; else
  case "$PROFILE" in
    release) cargo build --release -p tandem-tools --bin tandem-replay --manifest-path "$ROOT/Cargo.toml"; R=$CARGO_TARGET_DIR/release/tandem-replay ;;
    *) cargo build -p tandem-tools --bin tandem-replay --manifest-path "$ROOT/Cargo.toml"; R=$CARGO_TARGET_DIR/debug/tandem-replay ;;
  esac
fi
command -v rsync >/dev/null || { apt-get update -qq; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rsync >/dev/null; }
OUT=${WORK:-$(mktemp -d /tmp/restore-rsync.XXXXXX)}
mkdir -p "$OUT"
PID=
trap '[ -n "$PID" ] && stop_node "$PID"' EXIT
now() { python3 -c 'import time; print(time.time())'; }
warm() {
  sync
  if [ -w /proc/sys/vm/drop_caches ]; then echo 3 > /proc/sys/vm/drop_caches; else echo "(cannot drop caches: not root)"; fi
  find "$1" -type f -print0 | xargs -0 cat > /dev/null
}

KEY="$USERS $MSGS $SEED $PITR_MSGS"
if ! [ -f "$OUT/ready" ] || [ "$(cat "$OUT/ready")" != "$KEY" ]; then
  rm -rf "$OUT/corpus" "$OUT/node" "$OUT/bk" "$OUT/big.mbox"
  python3 "$SHARED/tools/corpus/gen_corpus.py" maildir --out "$OUT/corpus" --users "$USERS" --messages "$MSGS" --seed "$SEED" >/dev/null
  node_conf "$OUT/node" restore-bench
  PID=$(start_node "$OUT/node"); wait_up "$OUT/node"
  for u in $(seq 1 "$USERS"); do
    echo pass | "$T" --config "$OUT/node/tandem.toml" user add "user$u" --password-stdin >/dev/null
    TANDEM_NO_PROGRESS=1 "$T" --config "$OUT/node/tandem.toml" import maildir "$OUT/corpus/user$u/Maildir" --user "user$u" >/dev/null
  done
  t0=$(now)
  "$T" --config "$OUT/node/tandem.toml" backup --to "$OUT/bk"
  t1=$(now)
  echo "backup of the imported corpus into a directory: $(python3 -c "print(f'{$t1 - $t0:.1f}')") s"
  stop_node "$PID"; PID=
  echo "$KEY" > "$OUT/ready"
fi
bytes=$(du -sb "$OUT/corpus" | cut -f1)
count() { find "$OUT/bk/$1" -type f 2>/dev/null | wc -l; }
echo "corpus: $((USERS * MSGS)) messages, $((bytes / 1000000)) MB of Maildir; backup $(du -sm "$OUT/bk" | cut -f1) MB in $(count runs) run objects, $(count packs) packs, $(count manifests) manifests ($PROFILE)"

RESULTS=$OUT/results.txt; : > "$RESULTS"
for run in $(seq 1 "$RUNS"); do
  rm -rf "$OUT/restored" "$OUT/rsync-dst"
  warm "$OUT/bk"
  t2=$(now)
  TANDEM_NO_PROGRESS=1 "$R" restore --from "$OUT/bk" --data-dir "$OUT/restored" > /dev/null
  t3=$(now)
  rm -rf "$OUT/restored"
  warm "$OUT/corpus"
  t4=$(now)
  rsync -a "$OUT/corpus/" "$OUT/rsync-dst/"
  t5=$(now)
  sync
  t6=$(now)
  rm -rf "$OUT/rsync-dst"
  echo "$t2 $t3 $t4 $t5 $t6" >> "$RESULTS"
done

# PITR of one folder of PITR_MSGS messages on the running node.
if [ "$PITR_MSGS" -gt 0 ]; then
  [ -f "$OUT/big.mbox" ] || python3 "$SHARED/tools/corpus/gen_corpus.py" mbox --out "$OUT/big.mbox" --messages "$PITR_MSGS" --seed "$SEED" >/dev/null
  PID=$(start_node "$OUT/node"); wait_up "$OUT/node"
  C=(--config "$OUT/node/tandem.toml")
  echo pass | "$T" "${C[@]}" user add pitr --password-stdin >/dev/null 2>&1 || true   # there from an earlier run
  stamp=$(date +%s)
  TANDEM_NO_PROGRESS=1 "$T" "${C[@]}" import mbox "$OUT/big.mbox" --user pitr --folder "Big$stamp" >/dev/null
  sleep 1
  at=$(python3 -c "import datetime; print(datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%dT%H:%M:%S.%fZ'))")
  sleep 1
  PITR=$OUT/pitr.txt; : > "$PITR"
  for run in $(seq 1 "$RUNS"); do
    t7=$(now)
    "$T" "${C[@]}" restore --user pitr --folder "Big$stamp" --at "$at" --into "R$stamp-$run" > "$OUT/pitr-$run.out"
    t8=$(now)
    echo "$t7 $t8 $(cat "$OUT/pitr-$run.out" | tr '\n' ' ')" >> "$PITR"
  done
  stop_node "$PID"; PID=
fi

python3 - "$bytes" "$((USERS * MSGS))" "$RESULTS" "${PITR:-}" "$PITR_MSGS" <<'PY'
import statistics, sys
b, n, path, pitr, pm = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4], int(sys.argv[5])
rows = []
for line in open(path):
    t2, t3, t4, t5, t6 = map(float, line.split())
    rows.append((t3 - t2, t5 - t4, t6 - t4))
for i, (r, rs, rsd) in enumerate(rows, 1):
    print(f"  run {i}: restore {r:6.1f} s   rsync -a {rs:6.1f} s   rsync -a + sync {rsd:6.1f} s   restore/rsync {r / rs:.2f} x ({r / rsd:.2f} x against rsync + sync)")
r, rs, rsd = (statistics.median(x[k] for x in rows) for k in range(3))
print(f"  medians of {len(rows)} run(s):")
print(f"  tandem-replay restore  {r:8.1f} s  ({n / r:.0f} msg/s, {b / 1e6 / r:.0f} MB/s)")
print(f"  rsync -a               {rs:8.1f} s  ({b / 1e6 / rs:.0f} MB/s)")
print(f"  rsync -a, then sync    {rsd:8.1f} s  ({b / 1e6 / rsd:.0f} MB/s; durable like the restore)")
print(f"  restore / rsync        {statistics.median(x[0] / x[1] for x in rows):8.2f} x the time "
      f"({statistics.median(x[0] / x[2] for x in rows):.2f} x against rsync + sync)")
if pitr:
    ts = []
    for i, line in enumerate(open(pitr), 1):
        t7, t8, *msg = line.split()
        ts.append(float(t8) - float(t7))
        print(f"  pitr run {i}: {ts[-1]:.2f} s   {' '.join(msg)}")
    print(f"  tandem restore --folder ({pm} messages), median of {len(ts)}: {statistics.median(ts):.2f} s")
PY
[ -n "${WORK:-}" ] || echo "work dir: $OUT (remove when done)"
