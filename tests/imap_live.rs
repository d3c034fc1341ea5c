//! Live updates between sessions and from LMTP: NOOP and IDLE see flags,
//! expunges and new mail made elsewhere.

mod common;
use common::{node_with_users, python};

/// The start of a script: sessions `a` and `b` of alice, `n` messages
/// appended by `a`, INBOX selected in both.
fn two_sessions(n: usize) -> String {
    format!(
        r#"
from imaptest import *
a = connect("alice@example.org")
b = connect("alice@example.org")
for i in range({n}):
    ok(a.append("INBOX", None, None, message("m%d" % i)))
ok(a.select("INBOX"))
ok(b.select("INBOX"))
"#
    )
}

#[test]
fn two_sessions_see_each_others_changes_on_noop() {
    let dir = tempfile::tempdir().unwrap();
    let node = node_with_users(dir.path(), "two", "", &["alice@example.org"]);
    python(
        &node,
        &(two_sessions(3)
            + r#"
ok(a.store("2", "+FLAGS", "(\\Flagged)"))
typ, data = b.noop()
resp = b.response("FETCH")[1]
assert resp and any(b"\\Flagged" in r for r in resp if r), resp
ok(a.store("1", "+FLAGS", "(\\Deleted)"))
ok(a.expunge())
b.noop()
exp = b.response("EXPUNGE")[1]
assert exp == [b"1"], exp
lmtp_deliver("alice@example.org", message("fresh"))
b.noop()
exists = b.response("EXISTS")[1]
assert exists and exists[-1] == b"3", exists
r = ok(b.fetch("3", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])"))
assert b"fresh" in r[0][1], r
"#),
    );
}

#[test]
fn a_flag_change_is_reported_once_and_never_back_to_its_maker() {
    // A selected session keeps no copy of every message's flags: what it
    // reported is known by MODSEQ. Each change still reaches the other
    // session exactly once, and a session's own STORE (silent or not) is
    // not reported back to it by the next NOOP.
    let dir = tempfile::tempdir().unwrap();
    let node = node_with_users(dir.path(), "once", "", &["alice@example.org"]);
    python(
        &node,
        &(two_sessions(4)
            + r#"
def fetches(c):
    c.noop()
    return [r for r in c.response("FETCH")[1] if r]

ok(a.store("2", "+FLAGS", "(\\Flagged)"))
got = fetches(b)
assert len(got) == 1 and got[0].startswith(b"2 (") and b"\\Flagged" in got[0], got
assert fetches(b) == [], "reported twice"
ok(b.store("3", "+FLAGS", "(\\Seen)"))
ok(b.store("1", "+FLAGS.SILENT", "(\\Answered)"))
assert fetches(b) == [], "own change reported back"
got = fetches(a)
assert sorted(r.split(b" ")[0] for r in got) == [b"1", b"3"], got
assert fetches(a) == []
# Changed and changed back before the other session looks: it still learns
# the message's flags (now as they were), once.
ok(a.store("4", "+FLAGS", "(\\Flagged)"))
ok(a.store("4", "-FLAGS", "(\\Flagged)"))
got = fetches(b)
assert len(got) == 1 and got[0].startswith(b"4 (") and b"\\Flagged" not in got[0], got
assert fetches(b) == []
"#),
    );
}

#[test]
fn idle_sees_lmtp_delivery_promptly() {
    let dir = tempfile::tempdir().unwrap();
    let node = node_with_users(dir.path(), "idle", "", &["alice@example.org"]);
    let out = python(
        &node,
        r#"
from imaptest import *
import socket, statistics, threading
s = socket.create_connection((HOST, PORT))
f = s.makefile("rb")
f.readline()
s.sendall(b"a LOGIN alice@example.org secret\r\n")
assert f.readline().startswith(b"a OK")
s.sendall(b"b SELECT INBOX\r\n")
while not f.readline().startswith(b"b OK"):
    pass
delays = []
for i in range(10):
    s.sendall(b"c%d IDLE\r\n" % i)
    assert f.readline().startswith(b"+"), "no continuation"
    t250 = lmtp_deliver("alice@example.org", message("idle %d" % i))
    while True:
        line = f.readline()
        if line.endswith(b"EXISTS\r\n"):
            break
    seen = time.monotonic()
    delays.append(seen - t250)
    assert int(line.split()[1]) == i + 1, line
    s.sendall(b"DONE\r\n")
    while not f.readline().startswith(b"c%d OK" % i):
        pass
med = statistics.median(delays)
print("idle delays ms:", [round(d * 1000, 2) for d in delays], "median", round(med * 1000, 2))
assert med < 0.1, "median delay from 250 to EXISTS %.1f ms" % (med * 1000)
"#,
    );
    eprintln!("{out}");
}

/// An expunge made elsewhere is not announced during FETCH (sequence
/// numbers must not shift under the client); it is held back and announced
/// by the next NOOP, while flag changes and new mail still arrive.
#[test]
fn expunges_held_back_during_fetch_come_with_the_next_noop() {
    let dir = tempfile::tempdir().unwrap();
    let node = node_with_users(dir.path(), "held", "", &["alice@example.org"]);
    python(
        &node,
        r#"
from imaptest import *
a = connect("alice@example.org")
b = connect("alice@example.org")
for i in range(4):
    ok(a.append("INBOX", None, None, message("m%d" % i)))
ok(a.select("INBOX"))
ok(b.select("INBOX"))
ok(a.store("2", "+FLAGS", "(\\Deleted)"))
ok(a.expunge())
ok(a.store("3", "+FLAGS", "(\\Flagged)"))
lmtp_deliver("alice@example.org", message("fresh"))
# b still numbers four old messages; FETCH must not renumber them.
r = ok(b.fetch("1:4", "(UID)"))
got = [x for x in r if x]
# Old numbers: the expunged message (seq 2) has nothing to show (RFC 2180
# 4.1.2 allows leaving it out), and 3 and 4 keep their numbers.
assert b"3 (UID 3)" in got and b"4 (UID 4)" in got, got
assert b.response("EXPUNGE")[1] == [None], "EXPUNGE sent during FETCH"
b.noop()
exp = b.response("EXPUNGE")[1]
assert exp == [b"2"], exp
r = ok(b.fetch("1:*", "(UID FLAGS)"))
lines = [x for x in r if x]
assert len(lines) == 4, lines
assert any(b"\\Flagged" in x and b"UID 4" in x for x in lines), lines
"#,
    );
}
