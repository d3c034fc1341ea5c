#!/usr/bin/env bash
# Mirror benchmarks with two real nodes on loopback:
#   (a) replication lag p50/p99 at 500 msg/s (mirror_lag.py)
#   (d) catch-up of a stopped peer after 100 changes
#   RUNS=3 benches/mirror_lag.sh
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/tandem-target}
PROFILE=${PROFILE:-release}
RUNS=${RUNS:-3}
bash "$ROOT/.ci/setup"
if [ "$PROFILE" = release ]; then
  cargo build --release --bin tandem --manifest-path "$ROOT/Cargo.toml"; T=$CARGO_TARGET_DIR/release/tandem
else
  cargo build --bin tandem --manifest-path "$ROOT/Cargo.toml"; T=$CARGO_TARGET_DIR/debug/tandem
fi
OUT=$(mktemp -d /tmp/mirror-bench.XXXXXX)
port() { python3 -c 'import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
tport() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
MA=$(port); MB=$(port)
A_LMTP=$(tport); B_IMAP=$(tport)
conf() { # dir id mirrorport peer lmtp imap
  mkdir -p "$1"
  cat > "$1/tandem.toml" <<TOML
[node]
id = "$2"
data_dir = "$1/data"
[imap]
listen = "127.0.0.1:$6"
tls_listen = "127.0.0.1:0"
[lmtp]
listen = "127.0.0.1:$5"
[admin]
listen = "127.0.0.1:0"
[mirror]
listen = "127.0.0.1:$3"
peers = ["127.0.0.1:$4"]
secret = "benchmark shared secret"
reconnect_min_ms = 20
reconnect_max_ms = 200
TOML
}
conf "$OUT/a" bench-a "$MA" "$MB" "$A_LMTP" "$(tport)"
conf "$OUT/b" bench-b "$MB" "$MA" "$(tport)" "$B_IMAP"
start() { "$T" --config "$1/tandem.toml" serve > "$1/serve.log" 2>&1 & echo $!; }
wait_up() { for _ in $(seq 200); do grep -q "lmtp listening" "$1/serve.log" 2>/dev/null && return; sleep 0.05; done; echo "node did not start" >&2; exit 1; }
PA=$(start "$OUT/a"); PB=$(start "$OUT/b")
trap 'kill $PA $PB 2>/dev/null || true' EXIT
wait_up "$OUT/a"; wait_up "$OUT/b"
echo secret | "$T" --config "$OUT/a/tandem.toml" user add u@example.org --password-stdin >/dev/null
heads() { "$T" --config "$1/tandem.toml" status --json | python3 -c 'import json,sys; print(json.dumps(json.load(sys.stdin)["log"]["heads"], sort_keys=True))'; }
for _ in $(seq 200); do [ "$(heads "$OUT/a")" = "$(heads "$OUT/b")" ] && break; sleep 0.05; done
for r in $(seq 1 "$RUNS"); do
  A_LMTP=$A_LMTP B_IMAP=$B_IMAP python3 "$ROOT/benches/mirror_lag.py"
done
# (d) catch-up after 100 changes on A.
for r in $(seq 1 "$RUNS"); do
  kill -TERM "$PB"; wait "$PB" 2>/dev/null || true
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
  PB=$(start "$OUT/b"); wait_up "$OUT/b"
  python3 - "$T" "$OUT" "$want" <<'PY'
import json, subprocess, sys, time
t, out, want = sys.argv[1], sys.argv[2], sys.argv[3]
def status(n):
    return json.loads(subprocess.run([t, "--config", f"{out}/{n}/tandem.toml", "status", "--json"], capture_output=True, text=True).stdout)
t0 = time.time()
while True:
    st = status("b")
    if json.dumps(st["log"]["heads"], sort_keys=True) == want:
        done = time.time()
        break
    if time.time() - t0 > 30:
        sys.exit("B did not catch up")
    time.sleep(0.005)
link = status("a")["mirror"]["outgoing"][0]
up = link["since_ms"] / 1000.0
print("(d) catch-up of 100 changes: %.3f s from B's listeners up to caught up; %.3f s after A's link to B came up"
      % (done - t0, max(0.0, done - up)))
PY
done
echo "raw logs: $OUT"
