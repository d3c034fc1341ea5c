#!/usr/bin/env bash
# Merkle resync at scale, and rsync of the same mail as a Maildir tree, in
# one run. examples/gen_store.rs writes USERS x MSGS messages of SIZE bytes
# into node A (through the mutations LMTP uses), node B from A's log (as the
# mirror would), and the same mail as Maildir files; then:
#
#   1. equal nodes: `tandem verify` (twice) against `rsync -an --checksum`
#      (and the quick check, `rsync -an`) of two equal Maildir trees;
#   2. DIFFS differences made on B behind its log's back (half expunges,
#      half flag changes, each in another user) and the same on the Maildir
#      copy: find them (`tandem verify` / `rsync -an --checksum`), repair
#      them (`tandem resync`, until B's root equals A's / plain `rsync -a`).
#
#   USERS=40000 MSGS=10 SIZE=300 DIFFS=100 benches/resync_scale.sh
#   BULK=1 USERS=4000 MSGS=1000 ...   # metadata only (`gen_store bulk`):
#                          # shared tiny bodies, no Maildir and no rsync;
#                          # DIFFS defaults to 0.1 % of the messages; adds
#                          # `resync --fast`, a no-change verify after the
#                          # repair (NOCHANGE_RUNS=20 more: median and
#                          # worst; NOCHANGE_SETTLE=S: 20 more S seconds
#                          # later) and the nodes' RSS during the run
#   SKIP_GEN=1 OUT=DIR ... # again on the stores of an earlier run in DIR
#   PROFILE=debug ...      # a debug build (much slower)
#   PROFILE=devopt ...     # see benches/devopt.sh
#
# Warm page cache for both (the machine is shared; caches are not dropped).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
. "$ROOT/benches/lib.sh"
USERS=${USERS:-40000}
MSGS=${MSGS:-10}
SIZE=${SIZE:-300}
BULK=${BULK:-}
if [ -n "$BULK" ]; then DIFFS=${DIFFS:-$((USERS * MSGS / 1000))}; else DIFFS=${DIFFS:-100}; fi
PROFILE=${PROFILE:-release}
. "$ROOT/benches/devopt.sh"
build_bench_bins gen_store
G=$BIN_DIR/examples/gen_store
OUT=${OUT:-$(mktemp -d /tmp/resync-scale.XXXXXX)}
PA= PB=
SAMPLER=
trap 'kill $PA $PB $SAMPLER 2>/dev/null || true' EXIT
secs() { python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.3f}')" "$1" "$2"; }
now() { date +%s.%N; }

t0=$(now)
if [ -z "${SKIP_GEN:-}" ]; then # SKIP_GEN=1: reuse the undamaged store of an earlier run in OUT
  if [ -n "$BULK" ]; then
    "$G" bulk "$OUT" "$USERS" "$MSGS"
  else
    "$G" build "$OUT" "$USERS" "$MSGS" "$SIZE"
    cp -a "$OUT/maildir-a" "$OUT/maildir-b"
  fi
fi
t1=$(now)
if [ -n "$BULK" ]; then
  echo "store: $USERS users x $MSGS messages (metadata only, shared bodies) = $((USERS * MSGS)) messages, built in $(secs "$t0" "$t1") s"
  echo "sizes: node A $(du -sh "$OUT/a/data" | cut -f1), node B $(du -sh "$OUT/b/data" | cut -f1)"
else
  files=$(find "$OUT/maildir-a" -type f | wc -l)
  echo "store: $USERS users x $MSGS messages of ~$SIZE bytes = $((USERS * MSGS)) messages, built in $(secs "$t0" "$t1") s"
  echo "sizes: node A $(du -sh "$OUT/a/data" | cut -f1), node B $(du -sh "$OUT/b/data" | cut -f1), Maildir $(du -sh "$OUT/maildir-a" | cut -f1) in $files files"
fi

# A rerun on the same stores (SKIP_GEN=1) keeps the mirror's ports: where
# a link may resume is kept per peer address, and a new address would make
# A's first link read its whole apply order again (about a minute at 40 M).
old_port() { sed -n 's/^listen = "127.0.0.1:\([0-9]*\)"$/\1/p' "$OUT/$1/tandem.toml" 2>/dev/null | tail -1; }
if [ -n "${SKIP_GEN:-}" ] && [ -n "$(old_port a)" ] && [ -n "$(old_port b)" ]; then
  ma=$(old_port a); mb=$(old_port b)
else
  ma=$(udp_port); mb=$(udp_port)
fi
mirror_conf "$OUT/a" node-a "$ma" "$mb"
mirror_conf "$OUT/b" node-b "$mb" "$ma"
echo 'mode = "slave"' >> "$OUT/b/tandem.toml"
A() { "$T" --config "$OUT/a/tandem.toml" "$@"; }
root() { "$T" --config "$OUT/$1/tandem.toml" digest --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["root"])'; }
# A large store takes longer to open than wait_up allows.
up() {
  local s=$(now)
  for _ in $(seq 3000); do grep -q "lmtp listening" "$1/serve.log" 2>/dev/null && { echo "node $1 up in $(secs "$s" "$(now)") s"; return; }; sleep 0.1; done
  echo "node in $1 did not start in 300 s" >&2; exit 1
}
PA=$(start_node "$OUT/a"); PB=$(start_node "$OUT/b")
up "$OUT/a"; up "$OUT/b"
# RSS of both nodes, sampled every 0.2 s from here to the end (B's pid
# changes when it restarts after the damage): "a|b KB" lines.
echo "$PA $PB" > "$OUT/pids"
( while [ -e "$OUT/pids" ]; do
    read -r pa pb < "$OUT/pids" || true
    for x in "a $pa" "b $pb"; do
      set -- $x
      kb=$(awk '/VmRSS/ {print $2}' /proc/"$2"/status 2>/dev/null) && [ -n "$kb" ] && echo "$1 $kb"
    done
    sleep 0.2
  done > "$OUT/rss.log" ) &
SAMPLER=$!
[ "$(root a)" = "$(root b)" ] || { echo "the nodes differ before the damage" >&2; exit 1; }

# tandem verify/resync with --json: the node's own figures and the command's wall time.
run() {
  local label=$1; shift
  local s e
  s=$(now)
  TANDEM_NO_PROGRESS=1 A "$@" --json --peer "127.0.0.1:$mb" > "$OUT/r.json" 2>/dev/null || true
  e=$(now)
  python3 - "$OUT/r.json" "$label" "$s" "$e" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
wall = float(sys.argv[4]) - float(sys.argv[3])
print(f"tandem {sys.argv[2]:<28} compared {r['compared']:>9}  differences {r['differences']:>5}  repaired {r['repaired']:>5}  sent {r['bytes_sent']:>8} B  received {r['bytes_received']:>9} B  round trips {r['round_trips']:>2}  {r['seconds']*1000:9.1f} ms  (command {wall*1000:.0f} ms)")
c = r.get('carried')
if c:
    print(f"       {'':<28} by what they carried: tree {c['tree']} B, records {c['records']} B, bodies {c['bodies']} B, heads {c['heads']} B")
PY
}
rsync_run() {
  [ -n "$BULK" ] && return
  local label=$1; shift
  local s e n
  s=$(now)
  n=$(rsync "$@" --delete -i "$OUT/maildir-a/" "$OUT/maildir-b/" | wc -l)
  e=$(now)
  printf 'rsync  %-28s %s  items %6d  %9.1f ms\n' "$label" "$*" "$n" "$(python3 -c "print((float('$e') - float('$s')) * 1000)")"
}

echo
run "verify, equal nodes" verify
run "verify, equal nodes, again" verify
rsync_run "checksum, equal trees" -an --checksum
rsync_run "quick check, equal trees" -an

# Damage B behind its log's back (B stopped), and the Maildir copy alike.
stop_node "$PB"
"$G" damage "$OUT" "$DIFFS" 2> "$OUT/damage.log"
cat "$OUT/damage.log"
PB=$(start_node "$OUT/b")
up "$OUT/b"
echo "$PA $PB" > "$OUT/pids"
echo
run "verify, $DIFFS differences" verify
rsync_run "checksum, $DIFFS differences" -an --checksum
# What A's mirror link carries to B while the repair's events travel.
link_bytes() { A status --json | python3 -c 'import json,sys; o=json.load(sys.stdin)["mirror"]["outgoing"]; print(sum(l["sent_bytes"] + l["body_bytes_sent"] for l in o))'; }
cp "$OUT/r.json" "$OUT/verify.json"
link0=$(link_bytes)
if [ -n "$BULK" ]; then
  s=$(now)
  run "resync --fast, $DIFFS diffs" resync --fast
else
  s=$(now)
  run "resync, $DIFFS differences" resync
fi
for _ in $(seq 1 600); do [ "$(root a)" = "$(root b)" ] && break; sleep 0.05; done
e=$(now)
[ "$(root a)" = "$(root b)" ] || { echo "B did not converge after the repair" >&2; exit 1; }
echo "tandem resync until B's root equals A's: $(secs "$s" "$e") s"
link1=$(link_bytes)
cp "$OUT/r.json" "$OUT/resync.json"
echo "mirror link A->B during the repair: $((link1 - link0)) B (log entries and bodies)"
rsync_run "repair, $DIFFS differences" -a
rsync_run "checksum after the repair" -an --checksum
run "verify after the repair" verify
if [ -n "$BULK" ]; then
  run "verify, no change" verify
  run "verify, no change, again" verify
  # The no-change check's spread: NOCHANGE_RUNS more, median and worst,
  # right after the repair (the nodes flush and compact its writes) and,
  # with NOCHANGE_SETTLE=S, again S seconds later.
  spread() {
    for _ in $(seq 1 "${NOCHANGE_RUNS:-20}"); do
      TANDEM_NO_PROGRESS=1 A verify --json --peer "127.0.0.1:$mb" 2>/dev/null | python3 -c 'import json,sys; r = json.load(sys.stdin); print(r["seconds"], int(r.get("connection_kept", False)))'
    done > "$OUT/nochange.txt"
    python3 - "$OUT/nochange.txt" "$1" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
t = sorted(float(r[0]) * 1000 for r in rows)
kept = sum(int(r[1]) for r in rows)
print(f"tandem verify, no change, {len(t)} more runs {sys.argv[2]}: median {statistics.median(t):.1f} ms, best {t[0]:.1f} ms, worst {t[-1]:.1f} ms, {sum(x <= 10 for x in t)} of {len(t)} within 10 ms ({kept} on a kept connection)")
PY
  }
  spread "right after the repair"
  if [ -n "${NOCHANGE_SETTLE:-}" ]; then
    sleep "$NOCHANGE_SETTLE"
    spread "$NOCHANGE_SETTLE s later"
  fi
  true_bytes=$(awk '/^true difference:/ {print $3}' "$OUT/damage.log")
  python3 - "$OUT/verify.json" "$OUT/resync.json" "$true_bytes" "$DIFFS" "$((link1 - link0))" <<'PY'
import json, sys
v, r = json.load(open(sys.argv[1])), json.load(open(sys.argv[2]))
true, n, link = int(sys.argv[3]), max(int(sys.argv[4]), 1), int(sys.argv[5])
print(f"true difference: {true} B for {n} differences ({true / n:.0f} B each); goal: a repair's bytes <= 2x that plus tree overhead")
for label, x in [("verify", v), ("resync --fast", r)]:
    c = x.get("carried", {})
    whole = x["bytes_sent"] + x["bytes_received"]
    beyond = whole - c.get("tree", 0)
    print(f"{label}: {whole / n:.0f} B per difference in all; tree nodes {c.get('tree', 0) / n:.0f} B, the rest (records, bodies, heads) {beyond / n:.0f} B = {beyond / max(true, 1):.2f}x the true difference")
print(f"resync --fast and the mirror link's repair events together, beyond the tree: {(r['bytes_sent'] + r['bytes_received'] - r.get('carried', {}).get('tree', 0) + link) / max(true, 1):.2f}x the true difference ({link / n:.0f} B per difference on the link)")
PY
fi
echo
for n in a b; do
  pid=$([ $n = a ] && echo "$PA" || echo "$PB")
  echo "node $n: peak RSS $(grep VmHWM /proc/"$pid"/status | awk '{print $2, $3}'), RSS now $(grep VmRSS /proc/"$pid"/status | awk '{print $2, $3}')"
done
rm -f "$OUT/pids"; wait "$SAMPLER" 2>/dev/null || true
for n in a b; do
  echo "node $n: highest sampled RSS from start-up to the end $(awk -v n=$n '$1 == n && $2 > m {m = $2} END {print m}' "$OUT/rss.log") kB"
done
echo "data in $OUT"
