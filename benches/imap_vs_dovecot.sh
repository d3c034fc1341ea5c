#!/usr/bin/env bash
# IMAP reads over 10,000 messages, Tandem against Dovecot in the same run.
#
#   benches/imap_vs_dovecot.sh                    # release build, 3 runs
#   PROFILE=dev RUNS=1 benches/imap_vs_dovecot.sh
#   COUNT=2000 SEARCH_WORD=Thunderbird benches/imap_vs_dovecot.sh
#
# Both servers hold the same COUNT messages (gen_corpus.py maildir --seed 5,
# every message in INBOX): Tandem through `tandem import maildir`, Dovecot by
# copying the same Maildir files into the peer's $PEER_USER Maildir (the
# user's existing mail there is replaced), and FOLDERS empty folders
# bench/fNN created over IMAP. After one untimed pass of each command per
# server (indexes and page cache warm), each run times, per server, over one
# logged-in connection:
#   SELECT INBOX
#   FETCH 1:* (FLAGS ENVELOPE)
#   FETCH 1:100 (BODYSTRUCTURE), FETCH 1:100 (BODY[])
#   FETCH 1:100 (BODY.PEEK[HEADER.FIELDS (DATE FROM SUBJECT)])
#   UID SEARCH SINCE <the INTERNALDATE of the message at 90 %>
#   SEARCH TEXT "$SEARCH_WORD"     (a name found in some messages' headers)
#   STATUS of the FOLDERS folders (one command each)
#   STATUS INBOX (MESSAGES UIDNEXT UNSEEN), FOLDERS times
# and prints a table of medians. Fails if the servers disagree on the number
# of messages or of FETCH responses; prints both SEARCH counts. Also
# records Tandem's RSS idle after the import and after the runs, and the
# size of its data directory against the Maildir's. Results (medians too)
# go to $OUT/results.json; the corpus, Tandem's store and the peer user's
# Maildir are removed at the end unless KEEP=1. Timed commands run with
# each server on core 0 and the client on core 1 (PIN=0: the scheduler's
# placement), so both servers are measured under the same placement.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SHARED=${SHARED:-$(cd "$ROOT/../shared" && pwd)}
RUNS=${RUNS:-3}
COUNT=${COUNT:-10000}
SEED=${SEED:-5}
SEARCH_WORD=${SEARCH_WORD:-Mallory}
FOLDERS=${FOLDERS:-50}
PEER_USER=${PEER_USER:-user1}
OUT=${OUT:-$(mktemp -d /tmp/imap-bench.XXXXXX)}
PROFILE=${PROFILE:-release}
TANDEM_IMAP_PORT=${TANDEM_IMAP_PORT:-12143}
TANDEM_LMTP_PORT=${TANDEM_LMTP_PORT:-12525}
TANDEM_ADMIN_PORT=${TANDEM_ADMIN_PORT:-12643}
MAX_SECONDS=${MAX_SECONDS:-600}      # bound on each timed command

. "$ROOT/benches/lib.sh"
build_tandem
TANDEM=$T

"$SHARED/tools/peer/dovecot/start.sh" >/dev/null
. "$SHARED/tools/peer/dovecot/env.sh"

# The corpus: COUNT messages, all in the Maildir root (INBOX).
corpus=$OUT/corpus
python3 "$SHARED/tools/corpus/gen_corpus.py" maildir --out "$corpus" --users 1 \
  --messages "$COUNT" --seed "$SEED" --folders INBOX:1
maildir=$corpus/user1/Maildir
n=$(find "$maildir/cur" "$maildir/new" -type f | wc -l)
[ "$n" -eq "$COUNT" ] || { echo "corpus has $n messages, expected $COUNT" >&2; exit 1; }

# Tandem: a private node on fixed loopback ports.
node=$OUT/tandem
mkdir -p "$node"
node_conf "$node" imapbench "$TANDEM_LMTP_PORT" "$TANDEM_IMAP_PORT" "$TANDEM_ADMIN_PORT"
"$TANDEM" --config "$node/tandem.toml" serve > "$node/serve.log" 2>&1 &
pid=$!
dmail=$PEER_DIR/mail/$PEER_USER
loaded_peer=0
cleanup() {
  kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true
  # The peer outlives this script: give it every core back (see PIN below).
  for p in $(pgrep -f "$PEER_CONF" || true); do
    for q in $p $(pgrep -P "$p" || true); do taskset -a -p -c "0-$(( $(nproc) - 1 ))" "$q" > /dev/null 2>&1 || true; done
  done
  # The corpus, Tandem's store and the peer's copy are large; KEEP=1 keeps them.
  if [ "${KEEP:-0}" != 1 ]; then
    rm -rf "$corpus" "$node/data"
    if [ "$loaded_peer" = 1 ]; then rm -rf "$dmail/Maildir"; fi
  fi
}
trap cleanup EXIT
for _ in $(seq 300); do grep -q "imap listening" "$node/serve.log" && break; sleep 0.1; done
grep -q "imap listening" "$node/serve.log" || { cat "$node/serve.log" >&2; exit 1; }
echo pass | "$TANDEM" --config "$node/tandem.toml" user add user1 --password-stdin >/dev/null
t0=$(date +%s%N)
"$TANDEM" --config "$node/tandem.toml" import maildir "$maildir" --user user1
echo "tandem import: $(( ($(date +%s%N) - t0) / 1000000 )) ms"
sleep 2
rss() { awk '/^VmRSS/ {print $2}' "/proc/$pid/status"; }
rss_idle=$(rss)
# SINCE: the date of the message at 90 % of the INTERNALDATEs (mtimes).
since=$(find "$maildir/cur" "$maildir/new" -type f -printf '%T@\n' | sort -n | awk -v n="$COUNT" 'NR == int(n * 0.9) {print int($1)}')
since=$(LC_ALL=C date -u -d "@$since" +%d-%b-%Y)

# Dovecot: the same files (names keep S=/W= sizes and flags, mtimes are the
# INTERNALDATEs) replace $PEER_USER's Maildir, indexes included.
loaded_peer=1
rm -rf "$dmail/Maildir"
mkdir -p "$dmail"
cp -a "$maildir" "$dmail/Maildir"
chown -R "$PEER_MAIL_USER:" "$dmail"

# Placement: each server's processes and threads on core 0, the client on
# core 1 (PIN=0 leaves placement to the scheduler). Commands here take
# 0.02-0.2 ms of server time, and a wake-up across cores costs this
# machine's VMs 60-70 us: left to the scheduler, which of the two servers
# happened to share the client's core decided the STATUS and
# FETCH 1:100 rows, not the servers' own work.
client=(python3)
if [ "${PIN:-1}" = 1 ] && [ "$(nproc)" -ge 2 ] && command -v taskset > /dev/null; then
  taskset -a -p -c 0 "$pid" > /dev/null
  for p in $(pgrep -f "$PEER_CONF"); do
    for q in $p $(pgrep -P "$p"); do taskset -a -p -c 0 "$q" > /dev/null || true; done
  done
  client=(taskset -c 1 python3)
  echo "placement: Tandem and Dovecot on core 0, the client on core 1"
fi

"${client[@]}" - "$OUT" "$RUNS" "$SEARCH_WORD" "$COUNT" "$MAX_SECONDS" \
  "$PEER_IMAP_PORT" "$PEER_USER" "$PEER_PASS" "$TANDEM_IMAP_PORT" user1 pass "$since" "$FOLDERS" <<'PY'
import imaplib, json, re, statistics, sys, time
out, runs, word, count, max_s = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), float(sys.argv[5])
servers = {"dovecot": (int(sys.argv[6]), sys.argv[7], sys.argv[8]),
           "tandem": (int(sys.argv[9]), sys.argv[10], sys.argv[11])}
since, nfolders = sys.argv[12], int(sys.argv[13])
folders = ["bench/f%02d" % i for i in range(1, nfolders + 1)]
FETCH_START = re.compile(rb"\d+ \(")

def connect(name):
    port, user, pw = servers[name]
    c = imaplib.IMAP4("127.0.0.1", port, timeout=max_s)
    c.login(user, pw)
    for f in folders:
        c.create(f)                      # untimed; "already exists" is fine
    typ, data = c.select("INBOX")
    assert typ == "OK", (name, typ, data)
    return c, int(data[0])

def select(c):
    typ, data = c.select("INBOX")
    assert typ == "OK", (typ, data)
    return int(data[0])

def fetch_items(c, rng, items):
    typ, data = c.fetch(rng, items)
    assert typ == "OK", (typ, data[:3])
    # A response starts a new item "N (..."; text after a literal does not.
    return sum(1 for d in data if FETCH_START.match(d[0] if isinstance(d, tuple) else (d or b"")))

def fetch(c):
    return fetch_items(c, "1:*", "(FLAGS ENVELOPE)")

def bodystructure(c):
    return fetch_items(c, "1:100", "(BODYSTRUCTURE)")

def body(c):
    return fetch_items(c, "1:100", "(BODY[])")

def header_fields(c):
    return fetch_items(c, "1:100", "(BODY.PEEK[HEADER.FIELDS (DATE FROM SUBJECT)])")

def uid_since(c):
    typ, data = c.uid("SEARCH", "SINCE", since)
    assert typ == "OK", (typ, data)
    return len(data[0].split())

def search(c):
    typ, data = c.search(None, "TEXT", '"%s"' % word)
    assert typ == "OK", (typ, data)
    return len(data[0].split())

def status(c):
    n = 0
    for f in folders:
        typ, data = c.status(f, "(MESSAGES UIDNEXT UNSEEN)")
        assert typ == "OK", (f, typ, data)
        n += 1
    return n

def status_inbox(c):
    n = 0
    for _ in range(len(folders)):
        typ, data = c.status("INBOX", "(MESSAGES UIDNEXT UNSEEN)")
        assert typ == "OK", (typ, data)
        n += int(re.search(rb"MESSAGES (\d+)", data[0]).group(1)) == count
    return n

ops = [("SELECT INBOX", select), ("FETCH 1:* (FLAGS ENVELOPE)", fetch), ("FETCH 1:100 (BODYSTRUCTURE)", bodystructure),
       ("FETCH 1:100 (BODY[])", body), ("FETCH 1:100 (BODY.PEEK[HEADER.FIELDS (DATE FROM SUBJECT)])", header_fields), ("UID SEARCH SINCE %s" % since, uid_since), ('SEARCH TEXT "%s"' % word, search),
       ("STATUS of %d folders" % nfolders, status),
       ("STATUS INBOX (MESSAGES UIDNEXT UNSEEN), %d times" % nfolders, status_inbox)]
conns, counts, times = {}, {}, {}
for name in servers:
    t = time.monotonic()
    conns[name], exists = connect(name)
    print("%-8s SELECT INBOX: %d messages (%.0f ms, first open)" % (name, exists, (time.monotonic() - t) * 1000))
    counts[name] = {"EXISTS": exists}
    for label, f in ops:                 # untimed warm-up pass
        t = time.monotonic()
        counts[name][label] = f(conns[name])
        print("%-8s warm-up %-34s -> %6d  %8.0f ms" % (name, label, counts[name][label], (time.monotonic() - t) * 1000))
bad = ["%s: dovecot %d, tandem %d, expected %d" % (k, counts["dovecot"][k], counts["tandem"][k], count)
       for k in counts["tandem"] if k.startswith("FETCH 1:*") or k in ("EXISTS", "SELECT INBOX")
       if not counts["tandem"][k] == counts["dovecot"][k] == count]
bad += ["%s: dovecot %d, tandem %d" % (k, counts["dovecot"][k], counts["tandem"][k])
        for k in counts["tandem"] if k.startswith(("FETCH 1:100", "UID SEARCH", "STATUS"))
        if counts["tandem"][k] != counts["dovecot"][k]]
for r in range(1, runs + 1):
    for name in servers:
        for label, f in ops:
            t = time.monotonic()
            n = f(conns[name])
            ms = (time.monotonic() - t) * 1000
            times.setdefault((name, label), []).append(ms)
            print("run %d %-8s %-34s -> %6d  %8.1f ms" % (r, name, label, n, ms))
            if n != counts[name][label]:
                bad.append("%s %s returned %d, earlier %d" % (name, label, n, counts[name][label]))
for c in conns.values():
    c.logout()
print()
print("%-34s %12s %12s %8s" % ("medians of %d run(s), %d messages" % (runs, count), "dovecot ms", "tandem ms", "t/d"))
medians = {}
for label, _ in ops:
    d, t = statistics.median(times[("dovecot", label)]), statistics.median(times[("tandem", label)])
    medians[label] = {"dovecot": d, "tandem": t}
    print("%-34s %12.1f %12.1f %8.2f" % (label, d, t, t / d if d else float("nan")))
print()
for label, _ in ops:
    d, t = counts["dovecot"][label], counts["tandem"][label]
    print("%-34s dovecot %d, tandem %d%s" % (label, d, t, "" if d == t else "   <-- DIFFERENT"))
json.dump({"counts": counts, "times_ms": {"%s|%s" % k: v for k, v in times.items()}, "medians_ms": medians, "runs": runs},
          open(out + "/results.json", "w"), indent=1)
print("raw results: %s/results.json" % out)
if bad:
    sys.exit("FAIL: servers disagree or are incomplete:\n  " + "\n  ".join(bad))
PY
rss_after=$(rss)
tandem_bytes=$(du -sb "$node/data" | cut -f1)
maildir_bytes=$(du -sb "$maildir" | cut -f1)
echo "tandem RSS: ${rss_idle} kB idle after the import, ${rss_after} kB after the runs"
echo "tandem data dir $tandem_bytes bytes, Maildir $maildir_bytes bytes: $(python3 -c "print('%.2f' % ($tandem_bytes / $maildir_bytes))") x"
python3 - "$OUT/results.json" "$rss_idle" "$rss_after" "$tandem_bytes" "$maildir_bytes" "$COUNT" <<'PY'
import json, sys
p = sys.argv[1]
r = json.load(open(p))
r["rss_kb"] = {"idle": int(sys.argv[2]), "after": int(sys.argv[3])}
r["bytes"] = {"tandem_data": int(sys.argv[4]), "maildir": int(sys.argv[5])}
r["messages"] = int(sys.argv[6])
json.dump(r, open(p, "w"), indent=1)
PY
