#!/usr/bin/env bash
# Durable LMTP ingest, Tandem against Dovecot in the same run.
#
#   benches/lmtp_vs_dovecot.sh            # 3 runs x (1, 4, 16 connections)
#   RUNS=5 COUNT=5000 benches/lmtp_vs_dovecot.sh
#
# Both servers fsync before answering 250 (Dovecot: mail_fsync=optimized, its
# default; Tandem: group commit). Messages come from the shared corpus mix
# (mean ~27 KiB). Prints one line per run and a table of medians; the raw
# lmtp_load.py JSON files stay in $OUT.
#
# Around each Tandem run the node's /metrics (a private listener) and its
# CPU time are read, so the table also says what bounds Tandem: the share
# of the run its log writer spent committing groups (its transactions plus
# the durable write), the durable write per group, deliveries per group,
# and the cores the server and the client used.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SHARED=${SHARED:-$(cd "$ROOT/../shared" && pwd)}
RUNS=${RUNS:-3}
COUNT=${COUNT:-3000}
CONCURRENCY=${CONCURRENCY:-"1 4 16"}
OUT=${OUT:-$(mktemp -d /tmp/lmtp-bench.XXXXXX)}
PROFILE=${PROFILE:-release}
TANDEM_PORT=${TANDEM_PORT:-12424}

. "$ROOT/benches/lib.sh"
build_tandem
TANDEM=$T

"$SHARED/tools/peer/dovecot/start.sh" >/dev/null
. "$SHARED/tools/peer/dovecot/env.sh"

node=$OUT/tandem
mkdir -p "$node"
node_conf "$node" bench "$TANDEM_PORT"
METRICS_PORT=$(tcp_port)
printf '[metrics]\nlisten = "127.0.0.1:%s"\n' "$METRICS_PORT" >> "$node/tandem.toml"
"$TANDEM" --config "$node/tandem.toml" serve > "$node/serve.log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true; wait $pid 2>/dev/null || true' EXIT
for _ in $(seq 100); do grep -q "lmtp listening" "$node/serve.log" && break; sleep 0.1; done
for i in $(seq 1 10); do
  echo pass | "$TANDEM" --config "$node/tandem.toml" user add "user$i" --password-stdin >/dev/null
done

load() { # label port concurrency run
  python3 "$SHARED/tools/peer/lmtp_load.py" --port "$2" --users 'user%d@localhost' --nusers 10 \
    --count "$COUNT" --concurrency "$3" --max-seconds 300 --label "$1" --json "$OUT/$1-c$3-r$4.json" | tail -n 1
}

# status FILE: the node's status, its log writer's metrics and its CPU time.
status() {
  "$TANDEM" --config "$node/tandem.toml" status --json > "$1"
  python3 - "$1" "$METRICS_PORT" "$pid" <<'PY'
import json, os, sys, urllib.request
path, port, pid = sys.argv[1:]
m = {}
for line in urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode().splitlines():
    name, _, value = line.partition(" ")
    if name in ("tandem_log_group_commit_seconds_sum", "tandem_log_group_commit_seconds_count", "tandem_log_fsync_seconds_sum"):
        m[name] = float(value)
stat = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
m["cpu_seconds"] = (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")
s = json.load(open(path)); s["bench"] = m; json.dump(s, open(path, "w"))
PY
}
for c in $CONCURRENCY; do
  for r in $(seq 1 "$RUNS"); do
    load dovecot "$PEER_LMTP_PORT" "$c" "$r"
    status "$OUT/status-before-c$c-r$r.json"
    load tandem "$TANDEM_PORT" "$c" "$r"
    status "$OUT/status-after-c$c-r$r.json"
  done
done

python3 - "$OUT" "$CONCURRENCY" <<'PY'
import json, glob, statistics, sys
out, conc = sys.argv[1], sys.argv[2].split()
def med(label, c, f):
    vals = [f(json.load(open(p))) for p in sorted(glob.glob(f"{out}/{label}-c{c}-r*.json"))]
    return statistics.median(vals) if vals else float("nan")
print()
def per_fsync(c):
    vals = []
    for before in sorted(glob.glob(f"{out}/status-before-c{c}-r*.json")):
        after = before.replace("status-before", "status-after")
        b, a = json.load(open(before))["log"], json.load(open(after))["log"]
        vals.append((a["entries_appended"] - b["entries_appended"]) / max(1, a["fsyncs"] - b["fsyncs"]))
    return statistics.median(vals) if vals else float("nan")
def writer(c):
    """Medians over the runs of what Tandem's log writer and CPU did."""
    rows = []
    for before in sorted(glob.glob(f"{out}/status-before-c{c}-r*.json")):
        after = before.replace("status-before", "status-after")
        b, a = json.load(open(before))["bench"], json.load(open(after))["bench"]
        run = json.load(open(before.replace("status-before", "tandem")))
        d = {k: a[k] - b[k] for k in a}
        groups = max(1, d["tandem_log_group_commit_seconds_count"])
        rows.append((d["tandem_log_group_commit_seconds_sum"] / run["elapsed_s"],
                     d["tandem_log_fsync_seconds_sum"] / groups * 1e3,
                     (d["tandem_log_group_commit_seconds_sum"] - d["tandem_log_fsync_seconds_sum"]) / groups * 1e3,
                     d["cpu_seconds"] / run["elapsed_s"], run["client_cpu_s"] / run["elapsed_s"]))
    return [statistics.median(r[i] for r in rows) for i in range(5)] if rows else [float("nan")] * 5
print(f"{'conns':>5} {'dovecot msg/s':>14} {'tandem msg/s':>13} {'ratio':>6} {'dovecot p50/p99 ms':>19} {'tandem p50/p99 ms':>18} {'appends/fsync':>14}")
for c in conc:
    d = med("dovecot", c, lambda s: s["msgs_per_s"]); t = med("tandem", c, lambda s: s["msgs_per_s"])
    dp = med("dovecot", c, lambda s: s["latency_ms"]["p99"]); tp = med("tandem", c, lambda s: s["latency_ms"]["p99"])
    d5 = med("dovecot", c, lambda s: s["latency_ms"]["p50"]); t5 = med("tandem", c, lambda s: s["latency_ms"]["p50"])
    print(f"{c:>5} {d:>14.1f} {t:>13.1f} {t/d:>6.2f} {d5:>9.2f}/{dp:<9.2f} {t5:>8.2f}/{tp:<9.2f} {per_fsync(c):>14.2f}")
print()
print("Tandem's log writer (one thread: every group's transactions, then its durable write):")
print(f"{'conns':>5} {'writer busy':>12} {'write+fsync ms/group':>21} {'transactions ms/group':>22} {'server cores':>13} {'client cores':>13}")
summary = {}
for c in conc:
    busy, write, txn, cores, client = writer(c)
    summary[c] = {"writer_busy": busy, "write_ms_per_group": write, "transactions_ms_per_group": txn,
                  "server_cores": cores, "client_cores": client, "appends_per_fsync": per_fsync(c)}
    print(f"{c:>5} {busy:>11.0%} {write:>21.2f} {txn:>22.2f} {cores:>13.2f} {client:>13.2f}")
json.dump(summary, open(f"{out}/writer.json", "w"), indent=1)
print(f"medians of the runs; raw results: {out}")
PY
