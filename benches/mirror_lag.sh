#!/usr/bin/env bash
# Mirror benchmarks with two real nodes on loopback:
#   (a) replication lag p50/p99 at each of RATES msg/s (mirror_lag.py)
#   (d) catch-up of a stopped peer after 100 changes, from the restarted
#       peer's process start until its version vector equals A's
#   RUNS=3 RATES="500 2000" benches/mirror_lag.sh
# With RESULTS=FILE, each measurement is also appended to FILE as one JSON
# line ({"lag": {...}} or {"catchup_s": ...}).
# With SLAVE=1, A is configured master and B slave (the master gives the
# UIDs while the link is up); LAG_ON=b then delivers on B and watches B
# itself: how long the slave's own deliveries take to become visible there
# (the master's placement round trip).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
. "$ROOT/benches/lib.sh"
RUNS=${RUNS:-3}
RATES=${RATES:-500}
export RESULTS=${RESULTS:-}
build_tandem
OUT=$(mktemp -d /tmp/mirror-bench.XXXXXX)
MA=$(udp_port); MB=$(udp_port)
A_LMTP=$(tcp_port); B_IMAP=$(tcp_port); B_LMTP=$(tcp_port)
mirror_conf "$OUT/a" bench-a "$MA" "$MB" "$A_LMTP"
mirror_conf "$OUT/b" bench-b "$MB" "$MA" "$B_LMTP" "$B_IMAP"
if [ "${SLAVE:-0}" = 1 ]; then
  echo 'mode = "master"' >> "$OUT/a/tandem.toml"
  echo 'mode = "slave"' >> "$OUT/b/tandem.toml"
fi
LAG_LMTP=$A_LMTP
[ "${LAG_ON:-a}" = b ] && LAG_LMTP=$B_LMTP
PA=$(start_node "$OUT/a"); PB=$(start_node "$OUT/b")
trap 'kill $PA $PB 2>/dev/null || true' EXIT
wait_up "$OUT/a"; wait_up "$OUT/b"
echo secret | "$T" --config "$OUT/a/tandem.toml" user add u@example.org --password-stdin >/dev/null
for _ in $(seq 200); do [ "$(heads "$OUT/a")" = "$(heads "$OUT/b")" ] && break; sleep 0.05; done
for rate in $RATES; do
  for r in $(seq 1 "$RUNS"); do
    RATE=$rate A_LMTP=$LAG_LMTP B_IMAP=$B_IMAP python3 "$ROOT/benches/mirror_lag.py"
  done
done
# (d) catch-up after 100 changes on A.
for r in $(seq 1 "$RUNS"); do
  stop_node "$PB"
  A_LMTP=$A_LMTP python3 - <<'PY'
import os, socket
s = socket.create_connection(("127.0.0.1", int(os.environ["A_LMTP"]))); f = s.makefile("rb"); f.readline()
s.sendall(b"LHLO b\r\n")
while f.readline()[3:4] == b"-": pass
for i in range(100):
    s.sendall(b"MAIL FROM:<b@x>\r\nRCPT TO:<u@example.org>\r\nDATA\r\nSubject: c %d\r\n\r\nx\r\n.\r\n" % i)
    for _ in range(4): r = f.readline()
    assert r.startswith(b"250"), r
PY
  want=$(heads "$OUT/a")
  # One process starts B and watches it (benches/watch_heads.py), so the
  # figure holds no harness start-up: B's status is read over its admin
  # API every 2 ms, without spawning a client (a Python start alone costs
  # about 0.13 s here).
  read -r took after < <(python3 "$ROOT/benches/watch_heads.py" "$T" "$OUT/b/tandem.toml" "$want" --every 2 --timeout 30)
  printf "(d) catch-up of 100 changes: %.3f s from B's process start, %.3f s from B's admin API up to caught up\n" "$took" "$after"
  if [ -n "${RESULTS:-}" ]; then
    printf '{"catchup_s": %s, "catchup_after_listen_s": %s}\n' "$took" "$after" >> "$RESULTS"
  fi
  PB=$(cat "$OUT/b/pid")
done
echo "raw logs: $OUT"
