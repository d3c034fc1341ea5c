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
# time of the command.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
. "$ROOT/benches/lib.sh"
USERS=${USERS:-10}
MSGS=${MSGS:-1000}
EXTRA=${EXTRA:-100}
SEED=${SEED:-7}
SHARED=${TANDEM_SHARED:-$ROOT/../shared}
build_tandem
OUT=$(mktemp -d)
PA= PB=
trap 'kill $PA $PB 2>/dev/null || true; rm -rf "$OUT"' EXIT

python3 "$SHARED/tools/corpus/gen_corpus.py" maildir --out "$OUT/corpus" --users "$USERS" --messages "$MSGS" --seed "$SEED" >/dev/null
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
  A verify --json --peer "127.0.0.1:$mb" "$@" > "$OUT/r.json" || true
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
