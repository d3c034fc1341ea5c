#!/usr/bin/env bash
# One report: every comparison against its peer (Dovecot 2.3, rsync -a) in
# the same run, RUNS runs each, printed as one Markdown table (workload,
# peer, Tandem, ratio, goal, met) after the machine it ran on.
#
#   benches/report.sh                      # release build, RUNS=3 (~15-20 min on 2 cores)
#   RUNS=1 benches/report.sh               # quicker
#   TANDEM=/path/to/release/tandem benches/report.sh    # no build
#   ONLY="imap lmtp" benches/report.sh     # some sections: imap login lmtp reads sync mirror rebuild footprint
#
# Sections and the scripts they reuse:
#   imap     10 IMAP clients staying logged in, mixed commands (imap_load.py --mode mixed)
#   login    10 IMAP clients, LOGIN/LOGOUT every cycle, argon2id m=19 MiB t=2 on both
#   lmtp     durable LMTP ingest, corpus mix (~27 KB), 16 connections (lmtp_vs_dovecot.sh)
#   reads    FETCH/SELECT/SEARCH/STATUS on COUNT messages, RSS, data size (imap_vs_dovecot.sh)
#   sync     initial sync of a fresh peer against rsync -a (initial_sync.sh)
#   mirror   replication lag at 500 and 2,000 msg/s (1 and 8 LMTP connections), catch-up after a restart (mirror_lag.sh)
#   rebuild  tandem-rebuild of REBUILD_EVENTS deliveries, events/s
#   footprint  RSS, data dir and memory per connection at 1,000,000 messages
#            (footprint.sh; ~10 min; FOOT_MSGS, FOOT_USERS, FOOT_CONNS, FOOT_IDLE)
# Dovecot runs from ../shared/tools/peer/dovecot as a private instance
# (PEER_DIR, default /tmp/peer-report, ports 11143/11024). Its passdb is
# switched to {ARGON2ID} hashes of Tandem's cost (m=19456 KiB, t=2, p=1,
# made with the argon2 CLI: `doveadm pw -s ARGON2ID` only offers libsodium's
# presets, whose memory cost is 64 MiB or more) for the login section.
# Everything each section printed stays in $OUT (log.txt, one directory per
# section); the table is also written to $OUT/report.md.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SHARED=${SHARED:-$(cd "$ROOT/../shared" 2>/dev/null && pwd || echo /work/shared)}
export SHARED
export RUNS=${RUNS:-3}
SECONDS_EACH=${SECONDS_EACH:-10}            # each IMAP load run, per server
IMAP_COUNT=${IMAP_COUNT:-10000}             # messages of the reads section
LMTP_COUNT=${LMTP_COUNT:-3000}              # deliveries per LMTP run
SYNC_USERS=${SYNC_USERS:-2}; SYNC_MSGS=${SYNC_MSGS:-2000}
REBUILD_EVENTS=${REBUILD_EVENTS:-100000}
ONLY=${ONLY:-"imap login lmtp reads sync mirror rebuild footprint"}
OUT=${OUT:-$(mktemp -d /tmp/tandem-report.XXXXXX)}
mkdir -p "$OUT"
export PEER_DIR=${PEER_DIR:-/tmp/peer-report} PEER_IMAP_PORT=${PEER_IMAP_PORT:-11143} PEER_LMTP_PORT=${PEER_LMTP_PORT:-11024}
ROWS=$OUT/rows.jsonl; : > "$ROWS"
LOG=$OUT/log.txt
. "$ROOT/benches/lib.sh"

if [ -z "${TANDEM:-}" ]; then
  bash "$ROOT/.ci/setup"
  cargo build --release --workspace --manifest-path "$ROOT/Cargo.toml"
  TANDEM=$CARGO_TARGET_DIR/release/tandem
fi
export TANDEM
T=$TANDEM
REBUILD_BIN=${REBUILD_BIN:-$(dirname "$TANDEM")/tandem-rebuild}
"$SHARED/tools/peer/dovecot/start.sh" >> "$LOG"
. "$SHARED/tools/peer/dovecot/env.sh"
command -v rsync > /dev/null && command -v argon2 > /dev/null || {
  apt-get update -qq; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rsync argon2 > /dev/null; }

section() { echo; echo "== $1 ($(date -u +%H:%M:%S))" | tee -a "$LOG"; }
want() { case " $ONLY " in *" $1 "*) return 0;; *) return 1;; esac; }
pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done' EXIT

# A Tandem node for the IMAP load sections, users user1..user10 / pass.
start_imap_node() {
  node=$OUT/imap-node
  node_conf "$node" report-imap
  PN=$(start_node "$node"); pids+=("$PN"); wait_up "$node"
  for i in $(seq 1 10); do echo pass | "$T" --config "$node/tandem.toml" user add "user$i" --password-stdin > /dev/null; done
  T_IMAP=$(sed -n 's/.*imap listening on 127.0.0.1:\([0-9]*\).*/\1/p' "$node/serve.log" | head -n 1)
  T_LMTP=$(sed -n 's/.*lmtp listening on 127.0.0.1:\([0-9]*\).*/\1/p' "$node/serve.log" | head -n 1)
  # 30 messages per user on both, so that FETCH has something to read.
  for p in "$PEER_LMTP_PORT" "$T_LMTP"; do
    python3 "$SHARED/tools/peer/lmtp_load.py" --port "$p" --users 'user%d@localhost' --nusers 10 \
      --count 300 --concurrency 4 --max-seconds 120 >> "$LOG"
  done
}

# imap_rows MODE LABEL GOAL: RUNS alternating runs of imap_load.py per server.
imap_rows() {
  local d=$OUT/$1; mkdir -p "$d"
  for r in $(seq 1 "$RUNS"); do
    for s in dovecot tandem; do
      port=$PEER_IMAP_PORT; [ $s = tandem ] && port=$T_IMAP
      python3 "$ROOT/benches/imap_load.py" --port "$port" --mode "$1" --clients 10 --seconds "$SECONDS_EACH" \
        --label "$s" --json "$d/$s-r$r.json" | tee -a "$LOG"
    done
  done
  python3 - "$d" "$2" "$3" "$1" >> "$ROWS" <<'PY'
import glob, json, statistics, sys
d, label, goal, mode = sys.argv[1:]
med = lambda s: statistics.median(json.load(open(p))["rate"] for p in glob.glob(f"{d}/{s}-r*.json"))
dv, tv = med("dovecot"), med("tandem")
unit = "commands/s" if mode == "mixed" else "logins/s"
print(json.dumps({"workload": label, "peer_name": "Dovecot", "peer": "%.0f" % dv, "tandem": "%.0f" % tv, "unit": unit,
                  "ratio": "%.2f x" % (tv / dv), "goal": goal, "met": "yes" if tv / dv >= float(goal.split()[1]) else "no"}))
PY
}

if want imap || want login; then
  section "IMAP load node"
  start_imap_node
fi
if want imap; then
  section "IMAP mixed commands, 10 clients logged in"
  imap_rows mixed "IMAP mixed (LIST STATUS SELECT FETCH APPEND STORE EXPUNGE), 10 clients" "≥ 1.5 x"
fi
if want login; then
  section "IMAP login/logout every cycle, argon2id m=19 MiB t=2"
  users_tmp=$(mktemp)
  for i in $(seq 1 "$PEER_USERS"); do
    h=$(echo -n "$PEER_PASS" | argon2 "$(head -c 12 /dev/urandom | base64)" -id -t 2 -k 19456 -p 1 -l 32 -e)
    echo "user$i:{ARGON2ID}$h::::::"
  done > "$users_tmp"
  head -n 1 "$users_tmp" | cut -d: -f2 | cut -c1-40 | sed 's/^/dovecot passdb: /' >> "$LOG"
  install -m 0644 "$users_tmp" "$PEER_DIR/dovecot/users"; rm -f "$users_tmp"
  doveadm -c "$PEER_CONF" reload
  sleep 1
  imap_rows login "IMAP LOGIN+LOGOUT per cycle, argon2id m=19 MiB t=2, 10 clients" "≥ 1.5 x"
fi
if [ -n "${PN:-}" ]; then stop_node "$PN"; fi

if want lmtp; then
  section "LMTP durable ingest, 16 connections"
  d=$OUT/lmtp; mkdir -p "$d"
  OUT=$d CONCURRENCY=16 COUNT=$LMTP_COUNT TANDEM_PORT=$(tcp_port) bash "$ROOT/benches/lmtp_vs_dovecot.sh" | tee -a "$LOG"
  python3 - "$d" >> "$ROWS" <<'PY'
import glob, json, statistics, sys
d = sys.argv[1]
def med(s, f):
    return statistics.median(f(json.load(open(p))) for p in glob.glob(f"{d}/{s}-c16-r*.json"))
dv, tv = med("dovecot", lambda j: j["msgs_per_s"]), med("tandem", lambda j: j["msgs_per_s"])
dp, tp = med("dovecot", lambda j: j["latency_ms"]["p99"]), med("tandem", lambda j: j["latency_ms"]["p99"])
print(json.dumps({"workload": "LMTP durable ingest, corpus mix ~27 KB, 16 connections", "peer_name": "Dovecot",
                  "peer": "%.0f" % dv, "tandem": "%.0f" % tv, "unit": "msg/s", "ratio": "%.2f x" % (tv / dv),
                  "goal": "≥ 8,000 msg/s", "met": "yes" if tv >= 8000 else "no"}))
print(json.dumps({"workload": "LMTP ingest p99 latency, 16 connections", "peer_name": "Dovecot",
                  "peer": "%.1f" % dp, "tandem": "%.1f" % tp, "unit": "ms", "ratio": "%.2f x" % (tp / dp),
                  "goal": "≤ 5 ms", "met": "yes" if tp <= 5 else "no"}))
w = json.load(open(f"{d}/writer.json"))["16"]
print(json.dumps({"workload": "LMTP, 16 connections: Tandem's log writer busy (%.1f deliveries per group; %.2f ms durable write + %.2f ms transactions per group; server %.2f cores, client %.2f)"
                  % (w["appends_per_fsync"], w["write_ms_per_group"], w["transactions_ms_per_group"], w["server_cores"], w["client_cores"]),
                  "peer_name": "-", "peer": "-", "tandem": "%.0f" % (100 * w["writer_busy"]), "unit": "% of the run",
                  "ratio": "-", "goal": "- (what bounds the two rows above)", "met": "-"}))
PY
fi

if want reads; then
  section "IMAP reads on $IMAP_COUNT messages, RSS, data size"
  d=$OUT/reads; mkdir -p "$d"
  OUT=$d COUNT=$IMAP_COUNT TANDEM_IMAP_PORT=$(tcp_port) TANDEM_LMTP_PORT=$(tcp_port) TANDEM_ADMIN_PORT=$(tcp_port) \
    bash "$ROOT/benches/imap_vs_dovecot.sh" | tee -a "$LOG"
  python3 - "$d/results.json" >> "$ROWS" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
n = r["messages"]
for label, m in r["medians_ms"].items():
    d, t = m["dovecot"], m["tandem"]
    print(json.dumps({"workload": "%s (%d msgs in INBOX)" % (label, n), "peer_name": "Dovecot", "peer": "%.1f" % d,
                      "tandem": "%.1f" % t, "unit": "ms", "ratio": "%.2f x" % (t / d), "goal": "≤ 1.0 x",
                      "met": "yes" if t <= d else "no"}))
for k, what in (("idle", "idle after import"), ("after", "after SELECT + FETCH 1:* of all")):
    mb = r["rss_kb"][k] / 1024
    print(json.dumps({"workload": "Tandem RSS, %d msgs, %s" % (n, what), "peer_name": "-", "peer": "-", "tandem": "%.0f" % mb,
                      "unit": "MB", "ratio": "-", "goal": "- (1,000,000 msgs: footprint rows)", "met": "-"}))
b = r["bytes"]
ratio = b["tandem_data"] / b["maildir"]
print(json.dumps({"workload": "data dir size vs Maildir, %d msgs" % n, "peer_name": "Maildir", "peer": "%.0f" % (b["maildir"] / 1e6),
                  "tandem": "%.0f" % (b["tandem_data"] / 1e6), "unit": "MB", "ratio": "%.2f x" % ratio, "goal": "≤ 1.3 x",
                  "met": "yes" if ratio <= 1.3 else "no"}))
PY
fi

if want sync; then
  section "initial sync of a fresh peer vs rsync -a"
  d=$OUT/sync; mkdir -p "$d"
  WORK=$d USERS=$SYNC_USERS MSGS=$SYNC_MSGS bash "$ROOT/benches/initial_sync.sh" | tee -a "$LOG"
  python3 - "$d/results.txt" "$SYNC_USERS" "$SYNC_MSGS" >> "$ROWS" <<'PY'
import json, statistics, sys
rows = [list(map(float, l.split())) for l in open(sys.argv[1]) if l.strip()]
tandem = statistics.median(took for took, t4, t5, t6 in rows)
rs = statistics.median(t5 - t4 for took, t4, t5, t6 in rows)
ratio = statistics.median(took / (t5 - t4) for took, t4, t5, t6 in rows)
n = int(sys.argv[2]) * int(sys.argv[3])
print(json.dumps({"workload": "initial sync of a fresh peer, %d msgs" % n, "peer_name": "rsync -a", "peer": "%.2f" % rs,
                  "tandem": "%.2f" % tandem, "unit": "s", "ratio": "%.2f x" % ratio, "goal": "≤ 0.7 x",
                  "met": "yes" if ratio <= 0.7 else "no"}))
PY
fi

if want mirror; then
  section "replication lag and catch-up"
  d=$OUT/mirror; mkdir -p "$d"
  RESULTS=$d/results.jsonl RATES="500 2000" bash "$ROOT/benches/mirror_lag.sh" | tee -a "$LOG"
  python3 - "$d/results.jsonl" >> "$ROWS" <<'PY'
import json, statistics, sys
lines = [json.loads(l) for l in open(sys.argv[1])]
for rate in sorted({l["lag"]["rate"] for l in lines if "lag" in l}):
    ls = [l["lag"] for l in lines if "lag" in l and l["lag"]["rate"] == rate]
    p99 = statistics.median(l["p99"] for l in ls)
    ach = statistics.median(l["achieved"] for l in ls)
    conns = ls[0].get("conns", 1)
    print(json.dumps({"workload": "replication lag p99 at %.0f msg/s offered (%.0f achieved, %d LMTP conn%s)"
                      % (rate, ach, conns, "s" if conns > 1 else ""),
                      "peer_name": "-", "peer": "-", "tandem": "%.2f" % p99, "unit": "ms", "ratio": "-", "goal": "≤ 2 ms",
                      "met": "yes" if p99 <= 2 else "no"}))
c = statistics.median(l["catchup_s"] for l in lines if "catchup_s" in l)
print(json.dumps({"workload": "catch-up of 100 changes from the restarted peer's start", "peer_name": "-", "peer": "-",
                  "tandem": "%.3f" % c, "unit": "s", "ratio": "-", "goal": "≤ 0.1 s", "met": "yes" if c <= 0.1 else "no"}))
PY
fi

if want rebuild; then
  section "rebuild views by replay"
  d=$OUT/rebuild; mkdir -p "$d"
  node_conf "$d" report-rebuild
  PR=$(start_node "$d"); pids+=("$PR"); wait_up "$d"
  for i in $(seq 1 10); do echo pass | "$T" --config "$d/tandem.toml" user add "user$i" --password-stdin > /dev/null; done
  port=$(sed -n 's/.*lmtp listening on 127.0.0.1:\([0-9]*\).*/\1/p' "$d/serve.log" | head -n 1)
  python3 "$SHARED/tools/peer/lmtp_load.py" --port "$port" --users 'user%d@localhost' --nusers 10 \
    --count "$REBUILD_EVENTS" --concurrency 16 --size 1024 --max-seconds 600 | tail -n 1 | tee -a "$LOG"
  stop_node "$PR"
  : > "$d/times.txt"
  for r in $(seq 1 "$RUNS"); do
    t0=$(date +%s.%N)
    "$REBUILD_BIN" "$d/data" | tee -a "$LOG" > "$d/out.txt"
    t1=$(date +%s.%N)
    echo "$(grep -o '[0-9]*' "$d/out.txt" | head -n 1) $t0 $t1" >> "$d/times.txt"
  done
  python3 - "$d/times.txt" >> "$ROWS" <<'PY'
import json, statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
n = int(rows[0][0])
rate = statistics.median(int(a) / (float(t1) - float(t0)) for a, t0, t1 in rows)
print(json.dumps({"workload": "rebuild views by replay (tandem-rebuild, whole process), %d entries" % n, "peer_name": "-",
                  "peer": "-", "tandem": "%.0f" % rate, "unit": "events/s", "ratio": "-", "goal": "≥ 200,000/s",
                  "met": "yes" if rate >= 200000 else "no"}))
PY
fi

if want footprint; then
  section "footprint at scale"
  d=$OUT/footprint; mkdir -p "$d"
  OUT=$d bash "$ROOT/benches/footprint.sh" | tee -a "$LOG"
  python3 - "$d/results.json" >> "$ROWS" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
n, u = r["messages"], r["users"]
def row(workload, tandem, unit, goal, met):
    print(json.dumps({"workload": workload, "peer_name": "-", "peer": "-", "tandem": tandem, "unit": unit,
                      "ratio": "-", "goal": goal, "met": met if isinstance(met, str) else "yes" if met else "no"}))
for k, what in (("idle", "idle"), ("after_fetch", "after SELECT + FETCH 1:* (FLAGS ENVELOPE) of %d" % r["fetch"]["messages"])):
    mb = r["rss_kb"][k] / 1024
    row("Tandem RSS, %d msgs (%d users, %d B), %s" % (n, u, r["mail_bytes"] // max(n, 1), what), "%.0f" % mb, "MB",
        "≤ 300 MB", mb <= 300)
dd = r["data_dir"]
row("data dir right after %d deliveries vs the mail as stored (%.0f MB; %.0f MB delivered)"
    % (n, r["stored_bytes"] / 1e6, r["mail_bytes"] / 1e6),
    "%.0f (%.2f x)" % (dd["apparent_bytes"] / 1e6, dd["ratio"]), "MB", "-", "-")
row("data dir at rest (after a restart) vs the mail as stored",
    "%.0f (%.2f x)" % (dd["at_rest_bytes"] / 1e6, dd["at_rest_ratio"]), "MB", "≤ 1.3 x", dd["at_rest_ratio"] <= 1.3)
c = r["idle_connections"]
row("memory per idle logged-in IMAP connection (%d connections)" % c["connections"],
    "%.1f" % (c["bytes_per_connection"] / 1024), "KiB", "≤ 64 KiB", c["bytes_per_connection"] <= 64 * 1024)
i = r["idle_on_inbox"]
row("memory per client in IDLE on a %s-message INBOX (%d connections)" % (",".join(map(str, i["messages_in_inbox"])), i["connections"]),
    "%.1f" % (i["bytes_per_connection"] / 1024), "KiB", "≤ 64 KiB", i["bytes_per_connection"] <= 64 * 1024)
PY
fi

# The report.
{
  echo "## Tandem against its peers ($(date -u +%Y-%m-%dT%H:%MZ), RUNS=$RUNS, medians)"
  echo
  echo "Machine: $(nproc) cores, $(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -n 1)," \
    "$(awk '/MemTotal/ {printf "%.1f GiB RAM", $2 / 1048576}' /proc/meminfo)," \
    "disk $(df -h --output=source,fstype,size "$OUT" | tail -n 1 | awk '{print $1 " (" $2 ", " $3 ")"}')" \
    "$(lsblk -dno NAME,ROTA,MODEL 2>/dev/null | awk '{printf "%s%s rotational=%s %s", (NR>1?"; ":""), $1, $2, $3}')"
  echo "Peer: $(dovecot --version 2>/dev/null | head -n 1 | sed 's/^/Dovecot /'), $(rsync --version | head -n 1 | awk '{print $1, $3}')." \
    "Tandem: $("$T" --version 2>/dev/null || echo "$T"), commit $(git -C "$ROOT" rev-parse --short HEAD)."
  echo
  echo "| workload | peer | peer value | Tandem | unit | Tandem/peer | goal | met |"
  echo "| --- | --- | ---: | ---: | --- | ---: | --- | --- |"
  python3 - "$ROWS" <<'PY'
import json, sys
for l in open(sys.argv[1]):
    r = json.loads(l)
    print("| %s | %s | %s | %s | %s | %s | %s | %s |" % tuple(r[k] for k in
          ["workload", "peer_name", "peer", "tandem", "unit", "ratio", "goal", "met"]))
PY
} | tee "$OUT/report.md"
echo
echo "raw results and logs: $OUT"
