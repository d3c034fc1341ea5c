//! CONDSTORE and QRESYNC (RFC 7162) against the real daemon over a real
//! socket, with a raw client that sends exact command bytes
//! (`tests/py/rawimap.py`). Each assertion names the response the RFC
//! requires; a mirrored pair checks that a client failing over with the
//! other node's MODSEQ misses no change.

mod common;
use common::{admin_get, digest, free_udp_port, node_with_users, python, wait_until, Node};

/// Helpers for the scripts: read MODSEQ values and UIDs out of responses.
const PRELUDE: &str = r#"
import re
from imaptest import *
from rawimap import Raw

def modseq(line):
    m = re.search(r"MODSEQ \((\d+)\)", line)
    assert m, line
    return int(m.group(1))

def highest(lines):
    found = [int(m.group(1)) for m in (re.match(r"\* OK \[HIGHESTMODSEQ (\d+)\]", l) for l in lines) if m]
    assert len(found) == 1, lines
    return found[0]

def fetches(lines):
    return [l for l in lines if re.match(r"\* \d+ FETCH ", l)]

def uid(line):
    return int(re.search(r"UID (\d+)", line).group(1))

def vanished(lines):
    return [l for l in lines if l.startswith("* VANISHED")]

def append(r, n, box="INBOX"):
    for i in range(n):
        m = message("m%d" % i)
        r.ok(b"APPEND %s {%d+}\r\n%s" % (box.encode(), len(m), m))
"#;

fn script(body: &str) -> String {
    format!("{PRELUDE}\n{body}")
}

/// CONDSTORE: every enabling command, HIGHESTMODSEQ on SELECT and STATUS,
/// MODSEQ in FETCH (asked for, with CHANGEDSINCE, and unsolicited after
/// another session's flag change), STORE UNCHANGEDSINCE with MODIFIED, and
/// SEARCH / ESEARCH / SORT MODSEQ with the highest MODSEQ found.
#[test]
fn condstore_select_fetch_store_search_status() {
    let dir = tempfile::tempdir().unwrap();
    let node = node_with_users(dir.path(), "condstore", "", &["alice@example.org"]);
    python(
        &node,
        &script(
            r#"
r = Raw("alice@example.org")
caps = r.ok("CAPABILITY")[0].split()
assert "CONDSTORE" in caps and "QRESYNC" in caps, caps
append(r, 3)

# RFC 7162 3.1.6: STATUS HIGHESTMODSEQ (and it enables CONDSTORE).
st = r.ok("STATUS INBOX (HIGHESTMODSEQ MESSAGES)")
m = re.match(r'\* STATUS "INBOX" \(HIGHESTMODSEQ (\d+) MESSAGES 3\)', st[0])
assert m, st
h0 = int(m.group(1))
assert 0 < h0 <= 2**63 - 1, h0
# Enabled: SELECT now carries HIGHESTMODSEQ (3.1.2.1), the same value.
assert highest(r.ok("SELECT INBOX")) == h0

# A session without CONDSTORE: no HIGHESTMODSEQ, no MODSEQ in FETCH.
plain = Raw("alice@example.org")
lines = plain.ok("SELECT INBOX")
assert not any("HIGHESTMODSEQ" in l for l in lines), lines
f = fetches(plain.ok("FETCH 1:* (FLAGS)"))
assert len(f) == 3 and not any("MODSEQ" in l for l in f), f

# FETCH MODSEQ enables CONDSTORE while a mailbox is selected: the client
# is told HIGHESTMODSEQ first (3.1), then MODSEQ per message (3.1.4.1).
c = Raw("alice@example.org")
c.ok("SELECT INBOX")
lines = c.ok("FETCH 1:* (FLAGS MODSEQ)")
assert highest(lines) == h0, lines
f = fetches(lines)
assert len(f) == 3, f
mods = [modseq(l) for l in f]
assert len(set(mods)) == 3 and max(mods) == h0, (mods, h0)
uids = [uid(l) for l in fetches(c.ok("UID FETCH 1:* (UID)"))]

# SELECT (CONDSTORE) and ENABLE CONDSTORE (3.1.8, RFC 5161).
s = Raw("alice@example.org")
assert highest(s.ok("SELECT INBOX (CONDSTORE)")) == h0
e = Raw("alice@example.org")
assert e.ok("ENABLE CONDSTORE") == ["* ENABLED CONDSTORE"]
assert e.ok("ENABLE CONDSTORE") == ["* ENABLED"]
assert highest(e.ok("EXAMINE INBOX")) == h0

# A flag change: the storing session gets UID, FLAGS and MODSEQ (3.1.3).
lines = c.ok("STORE 1 +FLAGS (\\Flagged)")
f = fetches(lines)
assert len(f) == 1 and f[0].startswith("* 1 FETCH (UID %d FLAGS (\\Flagged) MODSEQ (" % uids[0]), f
m1 = modseq(f[0])
assert m1 > h0, (m1, h0)
# Unsolicited FETCH in another CONDSTORE session carries UID and MODSEQ
# (3.1.4); in a session without CONDSTORE it does not.
lines = s.ok("NOOP")
assert lines == ["* 1 FETCH (UID %d FLAGS (\\Flagged) MODSEQ (%d))" % (uids[0], m1)], lines
lines = plain.ok("NOOP")
assert lines == ["* 1 FETCH (UID %d FLAGS (\\Flagged))" % uids[0]], lines

# CHANGEDSINCE: only what changed after the value, with MODSEQ (3.1.4.1).
f = fetches(s.ok("FETCH 1:* (FLAGS) (CHANGEDSINCE %d)" % h0))
assert f == ["* 1 FETCH (FLAGS (\\Flagged) MODSEQ (%d))" % m1], f
assert fetches(s.ok("UID FETCH 1:* (FLAGS) (CHANGEDSINCE %d)" % m1)) == []
f = fetches(s.ok("UID FETCH 1:* FAST (CHANGEDSINCE %d)" % (h0 - 1)))
assert [uid(l) for l in f] == [uids[0], uids[2]], f

# STORE UNCHANGEDSINCE (3.1.3): message 1 changed after h0 and fails,
# named by message number in MODIFIED; 2 and 3 are stored.
lines, status = s.cmd("STORE 1:3 (UNCHANGEDSINCE %d) +FLAGS (\\Seen)" % h0)
assert status.startswith("OK [MODIFIED 1]"), (status, lines)
f = fetches(lines)
assert [l.split(" FETCH")[0] for l in f] == ["* 2", "* 3"], f
assert all("FLAGS (\\Seen)" in l and "UID " in l for l in f), f
m2 = max(modseq(l) for l in f)
assert "\\Seen" not in fetches(s.ok("FETCH 1 (FLAGS)"))[0]
# UID STORE: MODIFIED names UIDs; .SILENT still reports UID and MODSEQ.
lines, status = s.cmd("UID STORE %d:%d (UNCHANGEDSINCE %d) +FLAGS.SILENT (\\Answered)" % (uids[0], uids[2], m1))
assert status.startswith("OK [MODIFIED %d:%d]" % (uids[1], uids[2])), (status, lines)
f = fetches(lines)
assert len(f) == 1 and re.fullmatch(r"\* 1 FETCH \(UID %d MODSEQ \(\d+\)\)" % uids[0], f[0]), f
m3 = modseq(f[0])
assert m3 > m2
# UNCHANGEDSINCE 0 always fails.
lines, status = s.cmd("STORE 2 (UNCHANGEDSINCE 0) +FLAGS (\\Draft)")
assert status.startswith("OK [MODIFIED 2]") and fetches(lines) == [], (status, lines)
# A read-only mailbox still refuses.
lines, status = e.cmd("STORE 1 (UNCHANGEDSINCE %d) +FLAGS (\\Draft)" % m3)
assert status.startswith("NO [READ-ONLY]"), status

# SEARCH MODSEQ (3.1.5): MODSEQ >= n, and the highest MODSEQ found.
lines = s.ok("SEARCH MODSEQ %d" % m2)
assert lines == ["* SEARCH 1 2 3 (MODSEQ %d)" % m3], lines
lines = s.ok("UID SEARCH MODSEQ %d" % m3)
assert lines == ["* SEARCH %d (MODSEQ %d)" % (uids[0], m3)], lines
lines = s.ok("SEARCH MODSEQ \"/flags/\\\\draft\" all %d NOT ANSWERED" % m2)
assert lines == ["* SEARCH 2 3 (MODSEQ %d)" % m2], lines
lines = s.ok("SEARCH OR MODSEQ %d DELETED" % m3)
assert lines == ["* SEARCH 1 (MODSEQ %d)" % m3], lines
# Nothing found: no MODSEQ.
assert s.ok("SEARCH MODSEQ %d DELETED" % h0) == ["* SEARCH"]
lines = s.ok("UID SEARCH RETURN (COUNT) MODSEQ %d" % m2)
assert re.fullmatch(r'\* ESEARCH \(TAG "t\d+"\) UID COUNT 3 MODSEQ %d' % m3, lines[0]), lines
lines = s.ok("SORT (ARRIVAL) UTF-8 MODSEQ %d" % m3)
assert lines == ["* SORT 1 (MODSEQ %d)" % m3], lines
# SEARCH MODSEQ enables CONDSTORE too.
c2 = Raw("alice@example.org")
c2.ok("SELECT INBOX")
lines = c2.ok("SEARCH MODSEQ %d" % m3)
assert highest(lines) >= m3 and "* SEARCH 1 (MODSEQ %d)" % m3 in lines, lines

# An expunge held back during FETCH by number (RFC 3501 7.4.1) while MODSEQ
# values above it may have been shown: a HIGHESTMODSEQ below it follows
# (RFC 7162 3.2), until the expunge is told.
w = Raw("alice@example.org")
hw = highest(w.ok("SELECT INBOX (CONDSTORE)"))
x = Raw("alice@example.org")
x.ok("SELECT INBOX")
x.ok("STORE 3 +FLAGS.SILENT (\\Deleted)")
x.ok("EXPUNGE")
lines = w.ok("FETCH 1:* (UID MODSEQ)")
assert len(fetches(lines)) == 2 and not any("EXPUNGE" in l for l in lines), lines
assert highest(lines) == hw, (lines, hw)
lines = w.ok("NOOP")
assert lines == ["* 3 EXPUNGE"], lines
assert not any("HIGHESTMODSEQ" in l for l in w.ok("FETCH 1 (FLAGS)"))

# LIST-STATUS takes HIGHESTMODSEQ too.
lines = s.ok('LIST "" "INBOX" RETURN (STATUS (HIGHESTMODSEQ MESSAGES))')
st = [l for l in lines if l.startswith("* STATUS")]
assert len(st) == 1 and re.fullmatch(r'\* STATUS "INBOX" \(HIGHESTMODSEQ (\d+) MESSAGES 2\)', st[0]), lines
assert int(st[0].split()[4]) > m3, st
print("ok")
"#,
        ),
    );
    assert!(node.stop());
}

/// Hostile RFC 7162 arguments get a BAD that names the octet, never a
/// panic, and the session goes on.
#[test]
fn condstore_hostile_arguments_are_bad() {
    let dir = tempfile::tempdir().unwrap();
    let node = node_with_users(dir.path(), "condbad", "", &["alice@example.org"]);
    python(
        &node,
        &script(
            r#"
def session():
    r = Raw("alice@example.org")
    r.ok("ENABLE QRESYNC")
    r.ok("SELECT INBOX")
    return r

append(Raw("alice@example.org"), 2)
for i, (cmd, what) in enumerate([
    ("FETCH 1 (FLAGS) (CHANGEDSINCE 9223372036854775808)", "above 2^63-1 at octet"),
    ("FETCH 1 (FLAGS) (CHANGEDSINCE 18446744073709551616)", "above 2^63-1 at octet"),
    ("FETCH 1 (FLAGS) (CHANGEDSINCE 99999999999999999999999999999)", "above 2^63-1 at octet"),
    ("FETCH 1 (FLAGS) (CHANGEDSINCE -5)", "at octet"),
    ("FETCH 1 (FLAGS) (CHANGEDSINCE 1 CHANGEDSINCE 2)", "each once"),
    ("FETCH 1 (FLAGS) (CHANGEDSINCE 1 VANISHED)", "UID FETCH only"),
    ("UID FETCH 1 (FLAGS) (VANISHED)", "VANISHED needs CHANGEDSINCE"),
    ("STORE 1 (UNCHANGEDSINCE 9223372036854775808) +FLAGS (x)", "above 2^63-1 at octet"),
    ("STORE 1 (UNCHANGEDSINCE) +FLAGS (x)", "at octet"),
    ("STORE 1 () +FLAGS (x)", "expected UNCHANGEDSINCE"),
    ("SEARCH MODSEQ 9223372036854775808", "above 2^63-1 at octet"),
    ("SEARCH MODSEQ \"/nonsense\" all 5", "entry name"),
    ("SEARCH MODSEQ", "at octet"),
    ("SELECT INBOX (QRESYNC (1 9223372036854775808))", "above 2^63-1 at octet"),
    ("SELECT INBOX (QRESYNC (0 5))", "UIDVALIDITY"),
    ("SELECT INBOX (QRESYNC (1 5 1:*))", "no *"),
    ("SELECT INBOX (QRESYNC (1 5 3,0))", "non-zero"),
    ("SELECT INBOX (QRESYNC (1 5 1:x))", "at octet"),
    ("SELECT INBOX (QRESYNC (1 5 1:9 (1:3 1:4)))", "differ in count"),
    ("SELECT INBOX (QRESYNC (1 5 1:9 (1:3",  "at octet"),
    ("SELECT INBOX (BOGUS)", "expected CONDSTORE or QRESYNC"),
    ("SELECT INBOX ()", "expected CONDSTORE or QRESYNC"),
    ("SEARCH MODSEQ 1 MODSEQ 18446744073709551615", "above 2^63-1 at octet"),
]):
    # Twenty BADs close a session (imap.max_bad_commands): ten a session.
    if i % 10 == 0:
        r = session()
    lines, status = r.cmd(cmd)
    assert status.startswith("BAD") and what in status, (cmd, status, lines)
# The session and its selection survive.
assert len(fetches(r.ok("FETCH 1:* (FLAGS MODSEQ)"))) == 2
# The largest values are taken: a MODSEQ no message has reaches nothing
# wrong (it is above this node's highest: everything is sent).
f = fetches(r.ok("FETCH 1:* (FLAGS) (CHANGEDSINCE 9223372036854775807)"))
assert len(f) == 2, f
# VANISHED and the QRESYNC parameter need ENABLE QRESYNC (3.2.5, 3.2.6).
p = Raw("alice@example.org")
lines, status = p.cmd("SELECT INBOX (QRESYNC (1 1))")
assert status.startswith("BAD") and "ENABLE QRESYNC" in status, status
p.ok("SELECT INBOX")
lines, status = p.cmd("UID FETCH 1:* (FLAGS) (CHANGEDSINCE 1 VANISHED)")
assert status.startswith("BAD") and "ENABLE QRESYNC" in status, status
print("ok")
"#,
        ),
    );
    assert!(node.stop());
}

/// QRESYNC: VANISHED instead of EXPUNGE once enabled, SELECT (QRESYNC ...)
/// with VANISHED (EARLIER) and the changed messages, known UIDs limiting
/// both, a UIDVALIDITY that does not match, UID FETCH (CHANGEDSINCE n
/// VANISHED), the CLOSED response on re-select, and a full answer for a
/// MODSEQ this node cannot compare.
#[test]
fn qresync_select_vanished_and_closed() {
    let dir = tempfile::tempdir().unwrap();
    let node = node_with_users(dir.path(), "qresync", "", &["alice@example.org"]);
    python(
        &node,
        &script(
            r#"
q = Raw("alice@example.org")
assert q.ok("ENABLE QRESYNC") == ["* ENABLED QRESYNC"]
append(q, 5)
lines = q.ok("SELECT INBOX")
h0 = highest(lines)
validity = int(re.search(r"UIDVALIDITY (\d+)", " ".join(lines)).group(1))
u = [uid(l) for l in fetches(q.ok("UID FETCH 1:* (UID)"))]
assert len(u) == 5

# Another session, without QRESYNC, expunges 2 and 4 and flags 1: it is
# told EXPUNGE (RFC 3501).
o = Raw("alice@example.org")
o.ok("SELECT INBOX")
o.ok("STORE 2,4 +FLAGS.SILENT (\\Deleted)")
lines = o.ok("EXPUNGE")
assert lines == ["* 2 EXPUNGE", "* 3 EXPUNGE"], lines
o.ok("STORE 1 +FLAGS.SILENT (\\Seen)")

# The QRESYNC session is told VANISHED, never EXPUNGE (3.2.10), and the
# flag change with its MODSEQ.
lines = q.ok("NOOP")
assert "* VANISHED %d,%d" % (u[1], u[3]) in lines, lines
assert not any("EXPUNGE" in l for l in lines), lines
f = fetches(lines)
assert len(f) == 1 and f[0].startswith("* 1 FETCH (UID %d FLAGS (\\Seen) MODSEQ (" % u[0]), f
m1 = modseq(f[0])

# Re-select in the same session: CLOSED first (3.2.11), then a QRESYNC
# answer: VANISHED (EARLIER) for the known UIDs expunged since h0, then
# FETCH of the messages changed since (3.2.5.1).
lines = q.ok("SELECT INBOX (QRESYNC (%d %d %d:%d))" % (validity, h0, u[0], u[4]))
assert lines[0] == "* OK [CLOSED] Previous mailbox closed", lines
assert highest(lines) >= m1
assert vanished(lines) == ["* VANISHED (EARLIER) %d,%d" % (u[1], u[3])], lines
assert fetches(lines) == ["* 1 FETCH (UID %d FLAGS (\\Seen) MODSEQ (%d))" % (u[0], m1)], lines
assert lines.index(vanished(lines)[0]) < lines.index(fetches(lines)[0])
# Known UIDs limit both parts.
lines = q.ok("SELECT INBOX (QRESYNC (%d %d %d))" % (validity, h0, u[3]))
assert vanished(lines) == ["* VANISHED (EARLIER) %d" % u[3]] and fetches(lines) == [], lines
# With the sequence match data as well.
lines = q.ok("SELECT INBOX (QRESYNC (%d %d %d:%d (1:2 %d:%d)))" % (validity, h0, u[0], u[4], u[0], u[1]))
assert vanished(lines) == ["* VANISHED (EARLIER) %d,%d" % (u[1], u[3])], lines
# A UIDVALIDITY that does not match: a plain SELECT.
lines = q.ok("SELECT INBOX (QRESYNC (%d %d))" % (validity + 1, h0))
assert vanished(lines) == [] and fetches(lines) == [], lines
# Up to date: nothing.
now = highest(lines)
lines = q.ok("SELECT INBOX (QRESYNC (%d %d))" % (validity, now))
assert vanished(lines) == [] and fetches(lines) == [], lines

# UID FETCH (CHANGEDSINCE VANISHED) (3.2.6).
lines = q.ok("UID FETCH 1:* (FLAGS) (CHANGEDSINCE %d VANISHED)" % h0)
assert vanished(lines) == ["* VANISHED (EARLIER) %d,%d" % (u[1], u[3])], lines
assert fetches(lines) == ["* 1 FETCH (UID %d FLAGS (\\Seen) MODSEQ (%d))" % (u[0], m1)], lines
lines = q.ok("UID FETCH %d:%d (FLAGS) (CHANGEDSINCE %d VANISHED)" % (u[2], u[4], h0))
assert vanished(lines) == ["* VANISHED (EARLIER) %d" % u[3]] and fetches(lines) == [], lines

# Its own EXPUNGE: VANISHED too.
q.ok("STORE 2 +FLAGS.SILENT (\\Deleted)")
lines = q.ok("EXPUNGE")
assert lines == ["* VANISHED %d" % u[2]], lines

# A MODSEQ this node cannot compare (not of its scale): a full answer,
# every known UID not here is vanished and every message is sent.
lines = q.ok("SELECT INBOX (QRESYNC (%d 5 %d:%d))" % (validity, u[0], u[4]))
assert vanished(lines) == ["* VANISHED (EARLIER) %d:%d" % (u[1], u[3])], lines
assert [uid(l) for l in fetches(lines)] == [u[0], u[4]], lines
f = fetches(q.ok("UID FETCH 1:* (FLAGS) (CHANGEDSINCE 5)"))
assert [uid(l) for l in f] == [u[0], u[4]], f

# Without QRESYNC a re-select sends no CLOSED.
o.ok("ENABLE CONDSTORE")
lines = o.ok("SELECT INBOX")
assert not any("CLOSED" in l for l in lines), lines
print("ok")
"#,
        ),
    );
    assert!(node.stop());
}

const SECRET: &str = "correct horse battery staple";
const USER: &str = "u@example.org";

/// A mirrored pair, linked up and equal.
fn pair(dir: &std::path::Path) -> (Node, Node) {
    let (pa, pb) = (free_udp_port(), free_udp_port());
    let a = common::start_mirror(&dir.join("a"), "node-a", pa, &[pb], SECRET, "master", "");
    let b = common::start_mirror(&dir.join("b"), "node-b", pb, &[pa], SECRET, "slave", "");
    let (ok, _, err) = a.cli(&["user", "add", USER, "--password-stdin"], Some("secret\n"));
    assert!(ok, "{err}");
    assert!(wait_until(30, || same(&a, &b) && has_user(&b)), "the pair never converged");
    (a, b)
}

fn has_user(n: &Node) -> bool {
    let (ok, out, _) = n.cli(&["user", "list"], None);
    ok && out.contains(USER)
}

fn same(a: &Node, b: &Node) -> bool {
    let linked = admin_get(b, "/v1/status")["mirror"]["outgoing"]
        .as_array()
        .is_some_and(|o| o.iter().any(|l| l["state"] == "connected"));
    linked && digest(a) == digest(b)
}

/// MODSEQ across a mirror: each node has its own scale, so a client that
/// fails over with the first node's MODSEQ is given everything by the
/// second (CHANGEDSINCE, QRESYNC, SEARCH MODSEQ) and UNCHANGEDSINCE fails;
/// the change made on the first node before the failover is never missed.
/// A value of the node's own scale still gets the short answer.
#[test]
fn failover_with_the_other_nodes_modseq_misses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = pair(dir.path());
    common::deliver_range(&a, USER, "fo", 0..3);
    assert!(wait_until(30, || same(&a, &b)), "deliveries did not reach b");
    let out = python(
        &a,
        &script(
            r#"
c = Raw("u@example.org")
lines = c.ok("SELECT INBOX (CONDSTORE)")
print("HIGHEST", highest(lines))
c.ok("STORE 2 +FLAGS (\\Flagged)")
"#,
        ),
    );
    let h_a: u64 = out
        .split("HIGHEST ")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(wait_until(30, || same(&a, &b)), "the flag change did not reach b");
    python(
        &b,
        &script(&format!(
            r#"
h_a = {h_a}
c = Raw("u@example.org")
c.ok("ENABLE QRESYNC")
lines = c.ok("SELECT INBOX")
h_b = highest(lines)
validity = int(re.search(r"UIDVALIDITY (\d+)", " ".join(lines)).group(1))
# Two scales: the top 16 bits differ.
assert h_a >> 47 != h_b >> 47, (h_a, h_b)
# CHANGEDSINCE with a's value: the change on a (message 2 flagged) is
# reported, with every other message (a full answer).
f = fetches(c.ok("FETCH 1:* (FLAGS) (CHANGEDSINCE %d)" % h_a))
assert len(f) == 3 and "\\Flagged" in f[1], f
# QRESYNC with a's value: the same.
lines = c.ok("SELECT INBOX (QRESYNC (%d %d))" % (validity, h_a))
f = fetches(lines)
assert len(f) == 3 and "\\Flagged" in f[1], lines
# SEARCH MODSEQ with a's value: every message.
assert c.ok("SEARCH MODSEQ %d" % h_a)[0].startswith("* SEARCH 1 2 3 (MODSEQ "), "search"
# UNCHANGEDSINCE with a's value cannot be checked here: MODIFIED.
lines, status = c.cmd("STORE 1:3 (UNCHANGEDSINCE %d) +FLAGS (\\Seen)" % h_a)
assert status.startswith("OK [MODIFIED 1:3]") and fetches(lines) == [], (status, lines)
# b's own value: the short answer.
h_b = highest(c.ok("SELECT INBOX"))
assert fetches(c.ok("FETCH 1:* (FLAGS) (CHANGEDSINCE %d)" % h_b)) == []
lines, status = c.cmd("STORE 1 (UNCHANGEDSINCE %d) +FLAGS (\\Seen)" % h_b)
assert status.startswith("OK STORE") and len(fetches(lines)) == 1, (status, lines)
print("ok")
"#
        )),
    );
    assert!(a.stop());
    assert!(b.stop());
}
