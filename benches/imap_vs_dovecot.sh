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
# user's existing mail there is replaced). After one untimed pass of each
# command per server (indexes and page cache warm), each run times, per
# server, over one logged-in connection with INBOX selected:
#   (a) FETCH 1:* (FLAGS ENVELOPE)
#   (b) SEARCH TEXT "$SEARCH_WORD"     (a name found in some messages' headers)
# and prints a table of medians. Fails if the servers disagree on the number
# of messages or of FETCH responses; prints both SEARCH counts. Results go to
# $OUT/results.json; the corpus, Tandem's store and the peer user's Maildir
# are removed at the end unless KEEP=1.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SHARED=${SHARED:-$(cd "$ROOT/../shared" && pwd)}
RUNS=${RUNS:-3}
COUNT=${COUNT:-10000}
SEED=${SEED:-5}
SEARCH_WORD=${SEARCH_WORD:-Mallory}
PEER_USER=${PEER_USER:-user1}
OUT=${OUT:-$(mktemp -d /tmp/imap-bench.XXXXXX)}
PROFILE=${PROFILE:-release}
TANDEM_IMAP_PORT=${TANDEM_IMAP_PORT:-12143}
TANDEM_LMTP_PORT=${TANDEM_LMTP_PORT:-12525}
TANDEM_ADMIN_PORT=${TANDEM_ADMIN_PORT:-12643}
MAX_SECONDS=${MAX_SECONDS:-600}      # bound on each timed command

. "$ROOT/benches/lib.sh"
if [ -n "${TANDEM:-}" ]; then
  bash "$ROOT/.ci/setup"
  echo "using TANDEM=$TANDEM (no build)"
else
  build_tandem
  TANDEM=$T
fi

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

# Dovecot: the same files (names keep S=/W= sizes and flags, mtimes are the
# INTERNALDATEs) replace $PEER_USER's Maildir, indexes included.
loaded_peer=1
rm -rf "$dmail/Maildir"
mkdir -p "$dmail"
cp -a "$maildir" "$dmail/Maildir"
chown -R "$PEER_MAIL_USER:" "$dmail"

python3 - "$OUT" "$RUNS" "$SEARCH_WORD" "$COUNT" "$MAX_SECONDS" \
  "$PEER_IMAP_PORT" "$PEER_USER" "$PEER_PASS" "$TANDEM_IMAP_PORT" user1 pass <<'PY'
import imaplib, json, re, statistics, sys, time
out, runs, word, count, max_s = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), float(sys.argv[5])
servers = {"dovecot": (int(sys.argv[6]), sys.argv[7], sys.argv[8]),
           "tandem": (int(sys.argv[9]), sys.argv[10], sys.argv[11])}
FETCH_START = re.compile(rb"\d+ \(")

def connect(name):
    port, user, pw = servers[name]
    c = imaplib.IMAP4("127.0.0.1", port, timeout=max_s)
    c.login(user, pw)
    typ, data = c.select("INBOX")
    assert typ == "OK", (name, typ, data)
    return c, int(data[0])

def fetch(c):
    typ, data = c.fetch("1:*", "(FLAGS ENVELOPE)")
    assert typ == "OK", (typ, data[:3])
    # A response starts a new item "N (..."; text after a literal does not.
    return sum(1 for d in data if FETCH_START.match(d[0] if isinstance(d, tuple) else (d or b"")))

def search(c):
    typ, data = c.search(None, "TEXT", '"%s"' % word)
    assert typ == "OK", (typ, data)
    return len(data[0].split())

ops = [("FETCH 1:* (FLAGS ENVELOPE)", fetch), ('SEARCH TEXT "%s"' % word, search)]
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
       for k in counts["tandem"] if k.startswith("FETCH") or k == "EXISTS"
       if not counts["tandem"][k] == counts["dovecot"][k] == count]
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
for label, _ in ops:
    d, t = statistics.median(times[("dovecot", label)]), statistics.median(times[("tandem", label)])
    print("%-34s %12.1f %12.1f %8.2f" % (label, d, t, t / d if d else float("nan")))
print()
for label, _ in ops:
    d, t = counts["dovecot"][label], counts["tandem"][label]
    print("%-34s dovecot %d, tandem %d%s" % (label, d, t, "" if d == t else "   <-- DIFFERENT"))
json.dump({"counts": counts, "times_ms": {"%s|%s" % k: v for k, v in times.items()}},
          open(out + "/results.json", "w"), indent=1)
print("raw results: %s/results.json" % out)
if bad:
    sys.exit("FAIL: servers disagree or are incomplete:\n  " + "\n  ".join(bad))
PY
