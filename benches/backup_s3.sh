#!/usr/bin/env bash
# Backup throughput into a directory and into an S3-compatible bucket
# (moto's server on loopback, installed by .ci/setup), and restore time from
# each, on the same imported corpus in the same run.
#
#   PROFILE=debug USERS=2 MESSAGES=1000 bash benches/backup_s3.sh
#
# Prints one line per step: wall seconds and MB/s of body bytes.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
. "$ROOT/benches/lib.sh"
USERS=${USERS:-2}
MESSAGES=${MESSAGES:-1000}
SHARED=${TANDEM_SHARED:-$ROOT/../shared}
build_tandem
if [ "${PROFILE:-release}" = release ]; then
  cargo build --release -p tandem-tools --bin tandem-replay --manifest-path "$ROOT/Cargo.toml"
  R=$CARGO_TARGET_DIR/release/tandem-replay
else
  cargo build -p tandem-tools --bin tandem-replay --manifest-path "$ROOT/Cargo.toml"
  R=$CARGO_TARGET_DIR/debug/tandem-replay
fi
W=$(mktemp -d)
MOTO_PID=
NODE_PID=
cleanup() {
  [ -n "$NODE_PID" ] && stop_node "$NODE_PID"
  [ -n "$MOTO_PID" ] && kill "$MOTO_PID" 2>/dev/null && wait "$MOTO_PID" 2>/dev/null
  rm -rf "$W"
}
trap cleanup EXIT

python3 "$SHARED/tools/corpus/gen_corpus.py" maildir --out "$W/corpus" --users "$USERS" --messages "$MESSAGES" >/dev/null
BYTES=$(du -sb "$W/corpus" | cut -f1)

S3PORT=$(tcp_port)
/opt/tandem-s3/bin/moto_server -H 127.0.0.1 -p "$S3PORT" > "$W/moto.log" 2>&1 &
MOTO_PID=$!
for _ in $(seq 200); do curl -s -o /dev/null "http://127.0.0.1:$S3PORT/" && break; sleep 0.1; done
curl -s -X PUT -o /dev/null "http://127.0.0.1:$S3PORT/tandem-bench"
printf 'access_key_id = "bench"\nsecret_access_key = "bench-secret"\n' > "$W/s3.key"

node_conf "$W/n" bench
cat >> "$W/n/tandem.toml" <<TOML
[backup]
endpoint = "http://127.0.0.1:$S3PORT"
credentials_file = "$W/s3.key"
TOML
NODE_PID=$(start_node "$W/n")
wait_up "$W/n"
for u in $(seq "$USERS"); do
  echo pw | "$T" --config "$W/n/tandem.toml" user add "user$u@example.org" --password-stdin >/dev/null
  "$T" --config "$W/n/tandem.toml" import maildir "$W/corpus/user$u/Maildir" --user "user$u@example.org" >/dev/null
done

secs() { python3 -c "import time; print(time.time())"; }
rate() { python3 -c "import sys; b,s=float(sys.argv[1]),float(sys.argv[2]); print(f'{s:.2f} s  {b/s/1e6:.1f} MB/s')" "$1" "$2"; }
# CPU seconds the S3 server has used so far (it is a Python process: on
# this loopback set-up it, not Tandem, is the bottleneck of the S3 steps).
moto_cpu() { python3 -c "import os,sys; f=open('/proc/%s/stat'%sys.argv[1]).read().rsplit(')',1)[1].split(); print((int(f[11])+int(f[12]))/os.sysconf('SC_CLK_TCK'))" "$MOTO_PID"; }
step() {
  local name=$1; shift
  local t0 t1 c0 c1
  c0=$(moto_cpu); t0=$(secs); "$@" >/dev/null; t1=$(secs); c1=$(moto_cpu)
  echo "$name: $(rate "$BYTES" "$(python3 -c "print($t1-$t0)")")   (S3 server CPU $(python3 -c "print(f'{$c1-$c0:.1f}')") s)"
}
echo "corpus: $USERS users x $MESSAGES messages, $BYTES bytes (${PROFILE:-release} build)"
step "backup to dir               " "$T" --config "$W/n/tandem.toml" backup --to "$W/bk-dir"
step "backup to s3 (moto)         " "$T" --config "$W/n/tandem.toml" backup --to s3://tandem-bench/mx1
stop_node "$NODE_PID"; NODE_PID=
S3=(--s3-endpoint "http://127.0.0.1:$S3PORT" --s3-credentials "$W/s3.key")
step "restore from dir, 8 fetchers" "$R" restore --from "$W/bk-dir" --data-dir "$W/r-dir8"
step "restore from dir, 1 fetcher " "$R" restore --fetchers 1 --from "$W/bk-dir" --data-dir "$W/r-dir1"
step "restore from s3, 8 fetchers " "$R" "${S3[@]}" restore --from s3://tandem-bench/mx1 --data-dir "$W/r-s38"
step "restore from s3, 1 fetcher  " "$R" "${S3[@]}" restore --fetchers 1 --from s3://tandem-bench/mx1 --data-dir "$W/r-s31"
