//! IMAP command groups with Python's imaplib over real sockets, one scenario
//! per test.

mod common;
use common::{node_with_users, python};

const U: &str = "alice@example.org";

fn node(name: &str) -> (tempfile::TempDir, common::Node) {
    let dir = tempfile::tempdir().unwrap();
    let node = node_with_users(dir.path(), name, "", &[U, "bob@example.org"]);
    (dir, node)
}

#[test]
fn login_capability_logout() {
    let (_d, node) = node("login");
    python(
        &node,
        r#"
from imaptest import *
c = connect()
typ, caps = c.capability()
caps = caps[0].decode().split()
for want in ["IMAP4rev1", "IDLE", "UIDPLUS", "MOVE", "LITERAL+", "NAMESPACE", "SPECIAL-USE", "CHILDREN", "UNSELECT", "ENABLE", "ID", "AUTH=PLAIN"]:
    assert want in caps, (want, caps)
try:
    c.login("alice@example.org", "wrong")
    raise SystemExit("wrong password accepted")
except imaplib.IMAP4.error as e:
    assert "AUTHENTICATIONFAILED" in str(e), e
try:
    c.login("nobody@example.org", "secret")
    raise SystemExit("unknown user accepted")
except imaplib.IMAP4.error:
    pass
ok(c.login("Alice@Example.org", "secret"), "login")
typ, data = c.namespace()
assert typ == "OK" and b'(("" "/"))' in data[0], data
typ, data = c.xatom("ID", "NIL")
assert typ == "OK", data
assert c.logout()[0] == "BYE"
"#,
    );
    let st = common::admin_get(&node, "/v1/status");
    assert_eq!(st["imap"]["login_failures"], 2);
    assert_eq!(st["imap"]["logins"], 1);
}

#[test]
fn authenticate_plain() {
    let (_d, node) = node("authplain");
    python(
        &node,
        r#"
from imaptest import *
c = connect()
ok(c.authenticate("PLAIN", lambda _: b"\0alice@example.org\0secret"), "authenticate")
ok(c.select("INBOX"))
c.logout()
c = connect()
try:
    c.authenticate("PLAIN", lambda _: b"\0alice@example.org\0nope")
    raise SystemExit("bad password accepted")
except imaplib.IMAP4.error:
    pass
"#,
    );
}

#[test]
fn mailboxes_create_list_rename_delete_subscribe_status() {
    let (_d, node) = node("boxes");
    python(
        &node,
        r#"
from imaptest import *
c = connect("alice@example.org")
ok(c.create("Work/Old"), "create with parent")
ok(c.create("Entw&APw-rfe"), "create utf7")
typ, _ = c.create("Work")
assert typ == "NO", "duplicate create accepted"
lines = [l.decode() for l in ok(c.list('""', "*"))]
def attrs(name):
    for l in lines:
        if l.endswith(' "%s"' % name) or l.endswith(" %s" % name):
            return l
    raise SystemExit("%s not listed in %r" % (name, lines))
assert "\\HasChildren" in attrs("Work"), lines
assert "\\HasNoChildren" in attrs("Work/Old"), lines
assert "\\Sent" in attrs("Sent") and "\\Trash" in attrs("Trash") and "\\Junk" in attrs("Junk"), lines
assert "\\Drafts" in attrs("Drafts") and "\\Archive" in attrs("Archive"), lines
attrs("Entw&APw-rfe")
top = [l.decode() for l in ok(c.list('""', "%"))]
assert not any("Work/Old" in l for l in top), top
ok(c.rename("Work", "Projects"), "rename")
names = b" ".join(ok(c.list('""', "*"))).decode()
assert "Projects/Old" in names and '"Work' not in names, names
ok(c.subscribe("Projects"))
subs = b" ".join(ok(c.lsub('""', "*"))).decode()
assert "Projects" in subs and "INBOX" in subs, subs
ok(c.unsubscribe("Projects"))
subs = b" ".join(ok(c.lsub('""', "*"))).decode()
assert "Projects" not in subs, subs
ok(c.append("Projects", "(\\Seen)", None, message("s1")))
ok(c.append("Projects", None, None, message("s2")))
st = ok(c.status("Projects", "(MESSAGES UNSEEN UIDNEXT UIDVALIDITY)"))[0].decode()
assert "MESSAGES 2" in st and "UNSEEN 1" in st and "UIDNEXT 3" in st, st
ok(c.delete("Projects/Old"))
ok(c.delete("Projects"))
typ, _ = c.select("Projects")
assert typ == "NO"
typ, _ = c.delete("INBOX")
assert typ == "NO", "INBOX deleted"
c.logout()
"#,
    );
}

#[test]
fn uidvalidity_is_never_reused_for_a_recreated_name() {
    let (_d, node) = node("uidv");
    python(
        &node,
        r#"
from imaptest import *
c = connect("alice@example.org")
ok(c.create("Temp"))
v1 = ok(c.status("Temp", "(UIDVALIDITY)"))[0]
ok(c.delete("Temp"))
ok(c.create("Temp"))
v2 = ok(c.status("Temp", "(UIDVALIDITY)"))[0]
assert v1 != v2, (v1, v2)
"#,
    );
}

#[test]
fn append_fetch_store_search() {
    let (_d, node) = node("fetch");
    python(
        &node,
        r#"
from imaptest import *
import re
c = connect("alice@example.org")
m1 = message("Quarterly report", "numbers inside\r\n")
data = ok(c.append("INBOX", "(\\Flagged $Work)", imaplib.Time2Internaldate(1700000000), m1))
assert b"APPENDUID" in data[0], data
ok(c.append("INBOX", None, None, message("Lunch friday", "see you\r\n", frm="Bob <bob@example.org>")))
ok(c.append("INBOX", "(\\Seen)", None, message("Re: report", "thanks\r\n")))
typ, data = c.select("INBOX")
assert typ == "OK" and data[0] == b"3", data
r = ok(c.fetch("1", "(UID FLAGS INTERNALDATE RFC822.SIZE BODY.PEEK[])"))
meta = r[0][0].decode()
assert "UID 1" in meta and "\\Flagged" in meta and "$Work" in meta, meta
assert "RFC822.SIZE %d" % len(m1) in meta, meta
assert "14-Nov-2023" in meta, meta
assert r[0][1] == m1, "BODY[] is not the exact bytes"
r = ok(c.fetch("1", "(FLAGS)"))
assert b"\\Seen" not in r[0], "PEEK set \\Seen"
r = ok(c.fetch("1", "(BODY[HEADER.FIELDS (SUBJECT)])"))
assert r[0][1] == b"Subject: Quarterly report\r\n\r\n", r
r = ok(c.fetch("1", "(BODY[TEXT])"))
assert r[0][1] == b"numbers inside\r\n", r
r = ok(c.fetch("1", "(FLAGS)"))
assert b"\\Seen" in r[0], "BODY[] did not set \\Seen: %r" % r
r = ok(c.fetch("2", "(ENVELOPE BODYSTRUCTURE)"))
text = r[0].decode() if isinstance(r[0], bytes) else r[0][0].decode()
assert '"Lunch friday"' in text and '"bob" NIL "bob" "example.org"' in text.replace('"Bob"', '"bob"'), text
assert '"text" "plain"' in text.lower(), text
r = ok(c.fetch("1:3", "(BODY.PEEK[]<0.4>)"))
assert r[0][1] == b"From", r
ok(c.store("2", "+FLAGS", "(\\Answered)"))
r = ok(c.fetch("2", "(FLAGS)"))
assert b"\\Answered" in r[0], r
ok(c.store("2", "-FLAGS.SILENT", "(\\Answered)"))
assert ok(c.search(None, "SUBJECT", "report"))[0].split() == [b"1", b"3"]
assert ok(c.search(None, "UNSEEN"))[0].split() == [b"2"]
assert ok(c.search(None, "FROM", "bob"))[0].split() == [b"2"]
assert ok(c.search(None, "BODY", "THANKS"))[0].split() == [b"3"]
assert ok(c.search(None, "OR", "FLAGGED", "SEEN"))[0].split() == [b"1", b"3"]
assert ok(c.search(None, "KEYWORD", "$Work"))[0].split() == [b"1"]
assert ok(c.search(None, "NOT", "SEEN", "LARGER", "10"))[0].split() == [b"2"]
assert ok(c.uid("SEARCH", "UID", "2:*"))[0].split() == [b"2", b"3"]
typ, data = c.search("KOI8-R", "ALL")
assert typ == "NO", data
c.logout()
"#,
    );
}

#[test]
fn copy_move_expunge_with_uidplus() {
    let (_d, node) = node("copy");
    python(
        &node,
        r#"
from imaptest import *
c = connect("alice@example.org")
for i in range(5):
    ok(c.append("INBOX", None, None, message("m%d" % i)))
ok(c.select("INBOX"))
typ, data = c.copy("1:2", "Archive")
assert typ == "OK" and b"COPYUID" in data[0], data
typ, data = c.uid("MOVE", "3", "Trash")
assert typ == "OK", data
typ, data = c.select("INBOX")
assert data[0] == b"4", data
ok(c.store("1", "+FLAGS", "(\\Deleted)"))
typ, data = c.expunge()
assert typ == "OK" and data[0] == b"1", data
ok(c.uid("STORE", "4,5", "+FLAGS", "(\\Deleted)"))
typ, data = c.uid("EXPUNGE", "5")
assert typ == "OK", data
assert ok(c.uid("SEARCH", "ALL"))[0].split() == [b"2", b"4"], "only UID 5 of the deleted ones expunged"
st = ok(c.status("Archive", "(MESSAGES)"))[0]
assert b"MESSAGES 2" in st, st
st = ok(c.status("Trash", "(MESSAGES)"))[0]
assert b"MESSAGES 1" in st, st
ok(c.select("Trash"))
r = ok(c.fetch("1", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])"))
assert b"m2" in r[0][1], r
c.close()
c.logout()
"#,
    );
}

#[test]
fn rename_inbox_moves_its_messages() {
    let (_d, node) = node("inboxrename");
    python(
        &node,
        r#"
from imaptest import *
c = connect("alice@example.org")
ok(c.append("INBOX", None, None, message("one")))
ok(c.rename("INBOX", "\"Old Inbox\""))
assert b"MESSAGES 0" in ok(c.status("INBOX", "(MESSAGES)"))[0]
assert b"MESSAGES 1" in ok(c.status('"Old Inbox"', "(MESSAGES)"))[0]
"#,
    );
}

#[test]
fn bad_syntax_gets_bad_and_too_much_closes() {
    let (_d, node) = node("bad");
    python(
        &node,
        r#"
from imaptest import *
import socket
s = socket.create_connection((HOST, PORT))
f = s.makefile("rb")
assert f.readline().startswith(b"* OK")
s.sendall(b"a1 FROBNICATE\r\n")
assert f.readline().startswith(b"a1 BAD"), "unknown command"
s.sendall(b"a2 NOOP\r\n")
assert f.readline().startswith(b"a2 OK"), "connection survives bad syntax"
s.sendall(b"a3 LOGIN {99999999999}\r\n")
assert f.readline().startswith(b"a3 NO [TOOBIG]")
s.sendall(b"".join(b"x%d BAD BAD\r\n" % i for i in range(40)))
lines = []
while True:
    l = f.readline()
    if not l:
        break
    lines.append(l)
assert any(l.startswith(b"* BYE") for l in lines), lines[-3:]
"#,
    );
}
