#!/usr/bin/env bash
# Footprint at scale: one node, FOOT_USERS users, FOOT_MSGS deliveries of
# FOOT_SIZE bytes (default 100 users, 1,000,000 messages of 1.5 KB: 1.5 GB
# of mail, ~8 minutes of LMTP on 2 cores), then
#   - RSS idle (after the deliveries and a settle of SETTLE seconds),
#   - the data dir against the mail as stored (the sum of the messages'
#     sizes: what a Maildir of them holds), right after the deliveries and
#     at rest (after a restart has flushed RocksDB's WAL files), with the
#     disk and memory figures of `tandem status --json`,
#   - RSS after SELECT INBOX + FETCH 1:* (FLAGS ENVELOPE) of one user
#     (FOOT_MSGS / FOOT_USERS messages),
#   - RSS with FOOT_CONNS idle IMAP connections logged in (default 10,000),
#     reported per connection,
#   - RSS with FOOT_IDLE connections (default 1,000) that selected INBOX
#     (FOOT_MSGS / FOOT_USERS messages) and wait in IDLE, as mail clients
#     do, reported per connection.
# Goals (issue 15): RSS ≤ 300 MB idle and after the FETCH, data dir ≤ 1.3x
# the mail at rest, ≤ 64 KB per idle IMAP connection.
#
#   benches/footprint.sh                                  # release build, full size
#   FOOT_MSGS=100000 FOOT_CONNS=2000 benches/footprint.sh # quicker
#   TANDEM=/path/to/tandem OUT=/tmp/foot benches/footprint.sh
#
# Results: $OUT/results.json (and the node's dir $OUT/node, removed at the
# end unless KEEP=1). Needs an open-file limit above FOOT_CONNS (the hard
# limit of the shell; the script raises the soft one).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SHARED=${SHARED:-$(cd "$ROOT/../shared" 2>/dev/null && pwd || echo /work/shared)}
FOOT_USERS=${FOOT_USERS:-100}
FOOT_MSGS=${FOOT_MSGS:-1000000}
FOOT_SIZE=${FOOT_SIZE:-1536}
FOOT_CONNS=${FOOT_CONNS:-10000}
FOOT_IDLE=${FOOT_IDLE:-1000}
SETTLE=${SETTLE:-15}
OUT=${OUT:-$(mktemp -d /tmp/tandem-footprint.XXXXXX)}
mkdir -p "$OUT"
. "$ROOT/benches/lib.sh"
build_tandem

need=$((FOOT_CONNS + 1024))
hard=$(ulimit -Hn)
if [ "$hard" != unlimited ] && [ "$hard" -lt "$need" ]; then
  echo "the open-file hard limit ($hard) is below $need: lower FOOT_CONNS or raise it" >&2
  exit 1
fi
ulimit -n "$need"

d=$OUT/node
rm -rf "$d"
imap_port=$(tcp_port); lmtp_port=$(tcp_port)
limit=$((FOOT_CONNS + 100))
IMAP_EXTRA="max_connections = $limit
max_connections_per_ip = $limit
max_connections_per_user = $limit
login_attempts_per_ip = 0
login_attempts_per_user = 0" node_conf "$d" footprint "$lmtp_port" "$imap_port"
pid=$(start_node "$d")
trap 'kill "$pid" 2>/dev/null || true' EXIT
wait_up "$d"
for i in $(seq 1 "$FOOT_USERS"); do
  echo pass | "$T" --config "$d/tandem.toml" user add "user$i" --password-stdin > /dev/null
done

echo "== delivering $FOOT_MSGS messages of $FOOT_SIZE bytes to $FOOT_USERS users ($(date -u +%H:%M:%S))"
python3 "$SHARED/tools/peer/lmtp_load.py" --port "$lmtp_port" --users 'user%d@localhost' --nusers "$FOOT_USERS" \
  --count "$FOOT_MSGS" --concurrency 16 --size "$FOOT_SIZE" --max-seconds 3000 --json "$OUT/lmtp.json" | tail -n 1
sleep "$SETTLE"

rss() { awk '/^VmRSS/ {print $2}' "/proc/$pid/status"; }
rss_idle=$(rss)
"$T" --config "$d/tandem.toml" status --json > "$OUT/status_idle.json"
data_apparent=$(du -sb "$d/data" | cut -f1)
data_blocks=$(du -sB1 "$d/data" | cut -f1)
echo "RSS idle: $rss_idle kB; data dir $data_apparent bytes ($data_blocks on disk)"
# The mail as stored (trace headers added): what a Maildir of the same
# messages holds, byte for byte.
python3 "$ROOT/benches/footprint_imap.py" stored "$imap_port" "$FOOT_USERS" > "$OUT/stored.json"
cat "$OUT/stored.json"

echo "== SELECT + FETCH 1:* (FLAGS ENVELOPE) of user1 ($(date -u +%H:%M:%S))"
python3 "$ROOT/benches/footprint_imap.py" fetch "$imap_port" > "$OUT/fetch.json"
cat "$OUT/fetch.json"
sleep 2
rss_after=$(rss)
echo "RSS after the FETCH: $rss_after kB"

echo "== $FOOT_CONNS idle IMAP connections ($(date -u +%H:%M:%S))"
python3 "$ROOT/benches/footprint_imap.py" logins "$imap_port" "$FOOT_CONNS" "$FOOT_USERS" "$pid" | tee "$OUT/conns.json"

stop_node "$pid"
# At rest: started again (RocksDB flushes what its WAL files held).
pid=$(start_node "$d")
wait_up "$d"
"$T" --config "$d/tandem.toml" status --json > "$OUT/status_rest.json"
rest_apparent=$(du -sb "$d/data" | cut -f1)
echo "data dir at rest: $rest_apparent bytes"

# Clients in IDLE, on this fresh process: memory the 10,000 connections
# above freed would otherwise be reused and hide their cost. Every user
# selects INBOX once first, which fills the block cache (shared, bounded)
# and the authentication cache before the baseline.
echo "== $FOOT_IDLE connections in IDLE on INBOX ($(date -u +%H:%M:%S))"
python3 "$ROOT/benches/footprint_imap.py" idle "$imap_port" "$FOOT_IDLE" "$FOOT_USERS" "$pid" | tee "$OUT/idle.json"

stop_node "$pid"
trap - EXIT
python3 - "$OUT" "$rss_idle" "$rss_after" "$data_apparent" "$data_blocks" "$rest_apparent" "$FOOT_USERS" <<'PY' | tee "$OUT/results.json"
import json, sys
out, rss_idle, rss_after, apparent, blocks, rest, users = sys.argv[1], *map(int, sys.argv[2:])
lmtp = json.load(open(out + "/lmtp.json"))
st = json.load(open(out + "/status_idle.json"))
stored = json.load(open(out + "/stored.json"))["bytes"]
mail = lmtp["delivered"] * lmtp["avg_msg_bytes"]
res = {
    "messages": lmtp["delivered"], "users": users, "mail_bytes": mail, "stored_bytes": stored,
    "lmtp_msgs_per_s": lmtp.get("msgs_per_s"),
    "rss_kb": {"idle": rss_idle, "after_fetch": rss_after},
    "data_dir": {"apparent_bytes": apparent, "disk_bytes": blocks, "ratio": apparent / stored,
                 "at_rest_bytes": rest, "at_rest_ratio": rest / stored, "ratio_to_delivered": apparent / mail},
    "memory": st["log"].get("memory"),
    "disk": st["log"].get("disk"),
    "disk_at_rest": json.load(open(out + "/status_rest.json"))["log"].get("disk"),
    "fetch": json.load(open(out + "/fetch.json")),
    "idle_connections": json.load(open(out + "/conns.json")),
    "idle_on_inbox": json.load(open(out + "/idle.json")),
}
print(json.dumps(res, indent=1))
PY
[ "${KEEP:-0}" = 1 ] || rm -rf "$d"
