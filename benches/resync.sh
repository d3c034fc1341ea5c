#!/usr/bin/env bash
# Merkle comparison cost (for 40,000-user stores and rsync beside it, see
# benches/resync_scale.sh): `tandem verify` between two nodes holding the same
# generated corpus (USERS x MSGS messages), then after EXTRA messages reach
# node A only (A listens but does not push to B, so B never gets them).
#
#   USERS=10 MSGS=1000 EXTRA=100 benches/resync.sh
#   PROFILE=debug ...            # use a debug build
#
# Prints, for each comparison: differences, bytes sent and received, round
# trips and seconds as `tandem verify --json` reports them, and the wall
# time of the command. Then A is let push to B (the extra messages travel)
# and:
#
#   - DAMAGE differences (default 100) are made on B behind its log's
#     back (stopped; `examples/gen_store.rs damage`: half expunges, half
#     flag changes, one per user's INBOX in turn) and repaired by
#     `tandem resync` on A, timed until B's root equals A's;
#   - `tandem resync --full` re-reads and hashes every body: its rate in
#     MB/s against the disk's sequential read (dd of a file as large
#     as the bodies, written beside the nodes), each from a cold page cache
#     when run as root.
#
#   USERS=10 MSGS=10000 benches/resync.sh   # the 100,000-message corpus (~2.9 GB)
#   TANDEM=... GEN=...                      # built binaries (tandem, gen_store)
#   CORPUS=DIR ...                          # keep the generated corpus in DIR for later runs
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
. "$ROOT/benches/lib.sh"
USERS=${USERS:-10}
MSGS=${MSGS:-1000}
EXTRA=${EXTRA:-100}
SEED=${SEED:-7}
SHARED=${TANDEM_SHARED:-$ROOT/../shared}
build_tandem
if [ -z "${GEN:-}" ]; then
  if [ "${PROFILE:-release}" = release ]; then
    cargo build --release --example gen_store --manifest-path "$ROOT/Cargo.toml"
    GEN=$CARGO_TARGET_DIR/release/examples/gen_store
  else
    cargo build --example gen_store --manifest-path "$ROOT/Cargo.toml"
    GEN=$CARGO_TARGET_DIR/debug/examples/gen_store
  fi
fi
DAMAGE=${DAMAGE:-100}
OUT=$(mktemp -d)
PA= PB=
# KEEP=1: leave the nodes' directories (stopped) in OUT for a look afterwards.
trap 'for p in $PA $PB; do stop_node "$p"; done; if [ -n "${KEEP:-}" ]; then echo "kept: $OUT"; else rm -rf "$OUT"; fi' EXIT

# CORPUS=DIR: a corpus made earlier by the same command (same USERS, MSGS, SEED), kept.
if [ -n "${CORPUS:-}" ]; then
  [ -d "$CORPUS/user$USERS/Maildir" ] || python3 "$SHARED/tools/corpus/gen_corpus.py" maildir --out "$CORPUS" --users "$USERS" --messages "$MSGS" --seed "$SEED" >/dev/null
  ln -s "$CORPUS" "$OUT/corpus"
else
  python3 "$SHARED/tools/corpus/gen_corpus.py" maildir --out "$OUT/corpus" --users "$USERS" --messages "$MSGS" --seed "$SEED" >/dev/null
fi
python3 "$SHARED/tools/corpus/gen_corpus.py" maildir --out "$OUT/extra" --users 1 --messages "$EXTRA" --seed $((SEED + 1)) >/dev/null

ma=$(udp_port); mb=$(udp_port)
node_conf "$OUT/a" node-a
cat >> "$OUT/a/tandem.toml" <<TOML
[mirror]
listen = "127.0.0.1:$ma"
peers = []
secret = "benchmark shared secret"
TOML
mirror_conf "$OUT/b" node-b "$mb" "$ma"
PA=$(start_node "$OUT/a"); PB=$(start_node "$OUT/b")
wait_up "$OUT/a"; wait_up "$OUT/b"
A() { "$T" --config "$OUT/a/tandem.toml" "$@"; }
B() { "$T" --config "$OUT/b/tandem.toml" "$@"; }
root() { "$T" --config "$OUT/$1/tandem.toml" digest --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["root"])'; }

t0=$(date +%s.%N)
for u in $(seq 1 "$USERS"); do
  printf 'secret\n' | B user add "user$u" --password-stdin >/dev/null
  TANDEM_NO_PROGRESS=1 B import maildir "$OUT/corpus/user$u/Maildir" --user "user$u" >/dev/null
done
for _ in $(seq 1 6000); do [ "$(root a)" = "$(root b)" ] && break; sleep 0.1; done
[ "$(root a)" = "$(root b)" ] || { echo "the pair did not converge" >&2; exit 1; }
echo "corpus: $USERS users x $MSGS messages imported into B and mirrored to A in $(python3 -c "import time; print(round(time.time() - $t0, 1))") s"

report() {
  local label=$1; shift
  local s e
  s=$(date +%s.%N)
  TANDEM_NO_PROGRESS=1 A verify --json --peer "127.0.0.1:$mb" "$@" > "$OUT/r.json" || true
  e=$(date +%s.%N)
  python3 - "$OUT/r.json" "$label" "$s" "$e" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
wall = float(sys.argv[4]) - float(sys.argv[3])
print(f"{sys.argv[2]:<34} compared {r['compared']:>8}  differences {r['differences']:>5}  sent {r['bytes_sent']:>7} B  received {r['bytes_received']:>8} B  round trips {r['round_trips']:>2}  {r['seconds']*1000:8.1f} ms  (command {wall*1000:.0f} ms)")
PY
}
report "equal nodes"
report "equal nodes, again"
TANDEM_NO_PROGRESS=1 A import maildir "$OUT/extra/user1/Maildir" --user user1 --folder Extra >/dev/null
report "$EXTRA messages only on A"
report "$EXTRA messages only on A, one user" --user user1

# A pushes to B from here: the extra messages travel by the log.
stop_node "$PA"
mirror_conf "$OUT/a" node-a "$ma" "$mb"
PA=$(start_node "$OUT/a"); wait_up "$OUT/a"
for _ in $(seq 1 600); do [ "$(root a)" = "$(root b)" ] && break; sleep 0.1; done
[ "$(root a)" = "$(root b)" ] || { echo "the pair did not converge after A's link came up" >&2; exit 1; }
echo

# Damage on B that its log cannot explain, then A repairs it.
stop_node "$PB"
"$GEN" damage "$OUT" "$DAMAGE" 2> "$OUT/damage.log"
cat "$OUT/damage.log"
PB=$(start_node "$OUT/b"); wait_up "$OUT/b"
report "$DAMAGE differences on B"
# B's root is polled over its admin API from one process (about 1 ms a
# poll), from the moment the command starts.
python3 - "$OUT/a/data" "$OUT/b/data" "$OUT/eq" <<'PY' &
import json, os, sys, time, urllib.request
def digest(d):
    base = json.load(open(f"{d}/listen.json"))["admin"]
    tok = open(f"{d}/admin.token").read().strip()
    req = urllib.request.Request(base + "/v1/digest", headers={"Authorization": "Bearer " + tok})
    return json.load(urllib.request.urlopen(req))
a0, b0 = digest(sys.argv[1]), digest(sys.argv[2])
open(sys.argv[3] + ".ready", "w").close()
while not os.path.exists(sys.argv[3] + ".go"):
    time.sleep(0.0005)
t0 = time.time()
moved = None
while time.time() - t0 < 30:
    a, b = digest(sys.argv[1]), digest(sys.argv[2])
    if moved is None and (a["heads"] != a0["heads"] or b["root"] != b0["root"]):
        moved = time.time()
    if a["root"] == b["root"] and a["heads"] == b["heads"]:
        open(sys.argv[3], "w").write(f"{time.time()} {moved or t0}\n")
        break
    time.sleep(0.0005)
PY
poll=$!
for _ in $(seq 1 1000); do [ -e "$OUT/eq.ready" ] && break; sleep 0.01; done
s=$(date +%s.%N)
touch "$OUT/eq.go"
TANDEM_NO_PROGRESS=1 A resync --json --peer "127.0.0.1:$mb" > "$OUT/repair.json"
e=$(date +%s.%N)
wait $poll
[ -s "$OUT/eq" ] || { echo "B's root did not reach A's within 30 s of the repair" >&2; exit 1; }
read -r eq moved < "$OUT/eq"
python3 - "$OUT/repair.json" "$s" "$e" "$eq" "$moved" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
s, e, eq, moved = map(float, sys.argv[2:6])
print(f"{'resync':<34} differences {r['differences']:>5}  repaired {r['repaired']:>5}  sent {r['bytes_sent']:>7} B  received {r['bytes_received']:>8} B  round trips {r['round_trips']:>2}  {r['seconds']*1000:8.1f} ms  (command {(e-s)*1000:.0f} ms; repair first seen at {(moved-s)*1000:.0f} ms, B's root and heads equal to A's {(eq-s)*1000:.0f} ms after the command started)")
PY
report "after the repair"

# Scrub: every body re-read and hashed, against the disk's sequential read.
drop() {
  sync
  if [ "$(id -u)" = 0 ]; then echo 3 > /proc/sys/vm/drop_caches; else echo "(cannot drop caches: not root)"; fi
}
drop
s=$(date +%s.%N)
TANDEM_NO_PROGRESS=1 A resync --full --dry-run --json --peer "127.0.0.1:$mb" > "$OUT/full.json"
e=$(date +%s.%N)
# The disk's sequential read: a file as large as the bodies scrubbed (at
# most 4 GB), written and synced beside the nodes, read back cold.
mb_bodies=$(python3 -c "import json; print(min(4096, max(64, json.load(open('$OUT/full.json'))['body_bytes_checked'] >> 20)))")
head -c "${mb_bodies}M" /dev/urandom > "$OUT/seq"; sync "$OUT/seq"
drop
dd if="$OUT/seq" of=/dev/null bs=1M 2> "$OUT/dd.log"
rm -f "$OUT/seq"
python3 - "$OUT/full.json" "$s" "$e" "$OUT/dd.log" <<'PY'
import json, re, sys
r = json.load(open(sys.argv[1]))
s, e = float(sys.argv[2]), float(sys.argv[3])
mb = r["body_bytes_checked"] / 1e6
dd = open(sys.argv[4]).read()
m = re.search(r"(\d+) bytes .* copied, ([0-9.]+) s", dd)
disk = int(m.group(1)) / 1e6 / float(m.group(2))
print(f"{'resync --full (scrub)':<34} bodies {r['bodies_checked']:>7} checked, {r['bodies_bad']} bad  {mb:.0f} MB of bodies in {r['seconds']:.2f} s = {mb / r['seconds']:.0f} MB/s  (command {e - s:.2f} s)")
print(f"{'disk sequential read (dd)':<34} {int(m.group(1)) / 1e6:.0f} MB in {float(m.group(2)):.2f} s = {disk:.0f} MB/s; scrub / disk = {mb / r['seconds'] / disk:.2f}")
PY
