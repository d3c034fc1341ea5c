//! IMAP extensions through real clients (Python's imaplib, and a raw
//! socket client for the grammar imaplib cannot send), each checked
//! against its RFC: ENABLE (RFC 5161) with UTF8=ACCEPT (RFC 6855),
//! LIST-EXTENDED (RFC 5258) with SPECIAL-USE (RFC 6154) and LIST-STATUS
//! (RFC 5819), MULTIAPPEND (RFC 3502), ESEARCH (RFC 4731), SORT and THREAD
//! (RFC 5256) and COMPRESS=DEFLATE (RFC 4978).

mod common;
use common::{node_with_users, python};

#[test]
fn enable_utf8_accept_names_and_strings_in_utf8() {
    let dir = tempfile::tempdir().unwrap();
    let node = node_with_users(dir.path(), "utf8", "", &["alice@example.org"]);
    python(
        &node,
        r#"
from imaptest import *
from rawimap import Raw

c = connect("alice@example.org")
ok(c.capability())
caps = c.capabilities
assert "ENABLE" in caps and "UTF8=ACCEPT" in caps, caps

# Before ENABLE: 8-bit characters in a quoted string are a syntax error
# (RFC 3501 quoted strings are 7-bit), names are modified UTF-7.
r = Raw("alice@example.org")
lines, status = r.cmd('CREATE "Entwürfe"'.encode())
assert status.startswith("BAD"), status
r.ok("CREATE Entw&APw-rfe")
# The UTF8 data extension of APPEND needs ENABLE (RFC 6855 section 4).
lines, status = r.cmd(b"APPEND INBOX UTF8 (~{5+}\r\nhello)")
assert status.startswith("BAD"), status

# imaplib's ENABLE switches the client to UTF-8 (RFC 6855 section 3).
typ, data = c.enable("UTF8=ACCEPT")
assert typ == "OK", (typ, data)
assert c.utf8_enabled
assert c.untagged_responses.get("ENABLED") == [b"UTF8=ACCEPT"], c.untagged_responses
# ENABLE of a capability this server does not have enables nothing.
r2 = Raw("alice@example.org")
lines = r2.ok("ENABLE X-UNKNOWN UTF8=ACCEPT")
assert lines == ["* ENABLED UTF8=ACCEPT"], lines
lines = r2.ok("ENABLE UTF8=ACCEPT")
assert lines == ["* ENABLED"], lines

# Names in UTF-8, both ways.
ok(c.create('"Überweisungen"'), "create utf8")
ok(c.create('"Заметки/Работа"'), "create utf8 hierarchy")
names = [l.decode("utf-8") for l in ok(c.list('""', '*'))]
assert any(l.endswith('"Überweisungen"') for l in names), names
assert any(l.endswith('"Entwürfe"') for l in names), names
assert any(l.endswith('"Заметки/Работа"') for l in names), names
# After ENABLE a name is UTF-8 as given, not modified UTF-7.
ok(c.create('"A&B"'), "ampersand")
names = [l.decode("utf-8") for l in ok(c.list('""', 'A&*'))]
assert names == ['(\\HasNoChildren) "/" "A&B"'], names
typ, data = c.select('"Entwürfe"')
assert typ == "OK", data

# A client without UTF8=ACCEPT sees the same mailboxes in modified UTF-7.
names = [l.decode() for l in ok(connect("alice@example.org").list('""', '*'))]
assert any(l.endswith('"&ANw-berweisungen"') for l in names), names
assert any(l.endswith('"A&-B"') for l in names), names

# APPEND with the UTF8 data extension and a literal8 (RFC 6855 section 4),
# into a mailbox named in UTF-8; the message has UTF-8 headers.
msg = ("From: Jörg <jörg@example.org>\r\nTo: a@example.org\r\nSubject: Grüße aus Köln\r\n"
       "Date: Tue, 14 Nov 2023 22:13:20 +0000\r\n\r\nhallo\r\n").encode()
r2.ok(b'APPEND "Entw\xc3\xbcrfe" (\\Seen) UTF8 (~{%d+}\r\n%s)' % (len(msg), msg))
lines = r2.ok('STATUS "Entwürfe" (MESSAGES)'.encode())
assert lines == ['* STATUS "Entwürfe" (MESSAGES 1)'], lines

# SEARCH with a UTF-8 quoted string; CHARSET is refused (RFC 6855 section 3).
r2.ok('SELECT "Entwürfe"'.encode())
lines = r2.ok('SEARCH SUBJECT "grüße"'.encode())
assert lines == ["* SEARCH 1"], lines
lines, status = r2.cmd(b"SEARCH CHARSET UTF-8 ALL")
assert status.startswith("BAD"), status
# A quoted string that is not UTF-8 is still a syntax error.
lines, status = r2.cmd(b'SEARCH SUBJECT "\xff\xfe"')
assert status.startswith("BAD"), status
lines = r2.ok("FETCH 1 BODY.PEEK[HEADER.FIELDS (SUBJECT)]")
assert "Grüße aus Köln" in lines[0], lines
print("ok")
"#,
    );
}

#[test]
fn list_extended_special_use_and_status() {
    let dir = tempfile::tempdir().unwrap();
    let node = node_with_users(dir.path(), "listx", "", &["alice@example.org"]);
    python(
        &node,
        r#"
from imaptest import *
from rawimap import Raw

r = Raw("alice@example.org")
caps = r.ok("CAPABILITY")[0].split()
for cap in ("LIST-EXTENDED", "LIST-STATUS", "SPECIAL-USE"):
    assert cap in caps, caps
# A new user has the special-use mailboxes, subscribed.
DEFAULTS = {"Sent", "Drafts", "Trash", "Junk", "Archive"}
for name in ("Work", "Work/Projects", "Work/Old", "Misc", "Deep/Inner"):
    r.ok("CREATE " + name)
r.ok("DELETE Deep")  # Deep/Inner stays: Deep is a level of hierarchy only
r.ok("SUBSCRIBE Work/Projects")
r.ok("SUBSCRIBE INBOX")
r.ok("SUBSCRIBE Gone")  # subscribed, but no such mailbox
r.ok("UNSUBSCRIBE Junk")
for i in range(3):
    m = message("m%d" % i)
    r.ok(b"APPEND Work {%d+}\r\n%s" % (len(m), m))
r.ok("SELECT Work")
r.ok("STORE 2 +FLAGS (\\Seen)")

def listed(lines):
    out = {}
    for l in lines:
        if l.startswith("* LIST "):
            attrs = l[l.index("(") + 1:l.index(")")].split()
            name = l.split('"/" ')[1].split(" (")[0].strip('"')
            out[name] = (set(attrs), l)
    return out

# RFC 6154: the SPECIAL-USE selection option lists only special-use mailboxes.
got = listed(r.ok('LIST (SPECIAL-USE) "" "*"'))
assert set(got) == DEFAULTS, got
assert "\\Sent" in got["Sent"][0] and "\\Trash" in got["Trash"][0], got

# RFC 5258 SUBSCRIBED: subscribed names, existing or not (\NonExistent).
got = listed(r.ok('LIST (SUBSCRIBED) "" "*"'))
assert set(got) == {"INBOX", "Work/Projects", "Gone"} | DEFAULTS - {"Junk"}, got
assert all("\\Subscribed" in a for a, _ in got.values()), got
assert "\\NonExistent" in got["Gone"][0], got
# RECURSIVEMATCH: a parent whose child is subscribed, with CHILDINFO.
got = listed(r.ok('LIST (SUBSCRIBED RECURSIVEMATCH) "" "%"'))
assert set(got) == {"INBOX", "Work", "Gone"} | DEFAULTS - {"Junk"}, got
assert got["Work"][1].endswith('("CHILDINFO" ("SUBSCRIBED"))'), got
assert "\\Subscribed" not in got["Work"][0], got
# RECURSIVEMATCH alone is a syntax error (RFC 5258 section 3.1).
lines, status = r.cmd('LIST (RECURSIVEMATCH) "" "*"')
assert status.startswith("BAD"), status

# Several patterns at once.
got = listed(r.ok('LIST "" ("INBOX" "Work/%")'))
assert set(got) == {"INBOX", "Work/Projects", "Work/Old"}, got
# RETURN (CHILDREN SUBSCRIBED SPECIAL-USE).
got = listed(r.ok('LIST "" "%" RETURN (CHILDREN SUBSCRIBED SPECIAL-USE)'))
assert "\\HasChildren" in got["Work"][0] and "\\HasNoChildren" in got["Misc"][0], got
assert "\\Subscribed" in got["INBOX"][0] and "\\Trash" in got["Trash"][0], got
# A level of hierarchy that is no mailbox (RFC 5258 section 3: \NonExistent).
assert {"\\NonExistent", "\\Noselect", "\\HasChildren"} <= got["Deep"][0], got

# RFC 5819 LIST-STATUS: a STATUS after each selectable mailbox listed.
lines = r.ok('LIST "" "Work*" RETURN (STATUS (MESSAGES UNSEEN UIDNEXT))')
assert len(lines) == 6, lines
statuses = {}
for i, l in enumerate(lines):
    if l.startswith("* STATUS "):
        assert lines[i - 1].startswith("* LIST ") and lines[i - 1].split('"/" ')[1] == l.split(" ")[2], lines
        statuses[l.split(" ")[2].strip('"')] = l[l.index("(") + 1:-1]
assert statuses == {"Work": "MESSAGES 3 UNSEEN 2 UIDNEXT 4",
                    "Work/Projects": "MESSAGES 0 UNSEEN 0 UIDNEXT 1",
                    "Work/Old": "MESSAGES 0 UNSEEN 0 UIDNEXT 1"}, statuses
# No STATUS for a name that is no mailbox.
lines = r.ok('LIST (SUBSCRIBED) "" "Gone" RETURN (STATUS (MESSAGES))')
assert len(lines) == 1 and "\\NonExistent" in lines[0], lines
lines, status = r.cmd('LIST "" "*" RETURN (STATUS (BOGUS))')
assert status.startswith("BAD") and "octet" in status, status

# imaplib's plain LIST still gets RFC 3501 answers.
c = connect("alice@example.org")
names = [l.decode() for l in ok(c.list('""', '%'))]
assert '(\\HasChildren) "/" "Work"' in names, names
names = [l.decode() for l in ok(c.lsub('""', '*'))]
assert len(names) == 6 and all("\\Subscribed" not in n for n in names), names
print("ok")
"#,
    );
}

#[test]
fn multiappend_is_all_or_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let node = node_with_users(dir.path(), "mapp", "", &["alice@example.org"]);
    python(
        &node,
        r#"
from imaptest import *
from rawimap import Raw

r = Raw("alice@example.org")
assert "MULTIAPPEND" in r.ok("CAPABILITY")[0].split()
r.ok("CREATE Work")
a, b, c = message("one"), message("two"), message("three")
# Three messages in one command, with their own flags and dates; one
# APPENDUID names them all (RFC 4315 with RFC 3502).
lines, status = r.cmd(b'APPEND Work (\\Seen) " 3-Feb-2026 10:00:00 +0100" {%d+}\r\n%s (\\Flagged $Work) {%d+}\r\n%s {%d+}\r\n%s'
                      % (len(a), a, len(b), b, len(c), c))
assert status.startswith("OK [APPENDUID ") and status.split()[3] == "1:3]", status
r.ok("EXAMINE Work")
lines = r.ok("FETCH 1:* (FLAGS INTERNALDATE BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
assert len([l for l in lines if " FETCH " in l]) == 3, lines
assert 'FLAGS (\\Seen) INTERNALDATE "03-Feb-2026 10:00:00 +0100"' in lines[0], lines
assert "FLAGS ($Work \\Flagged)" in lines[1] and "Subject: two" in lines[1], lines
assert "Subject: three" in lines[2], lines

# A message that cannot be taken fails the whole command: nothing stored.
bad = b'APPEND Work {%d+}\r\n%s "31-Feb-2026 10:00:00 +0000" {%d+}\r\n%s' % (len(a), a, len(b), b)
lines, status = r.cmd(bad)
assert status.startswith("BAD"), status
lines, status = r.cmd(b"APPEND Nowhere {%d+}\r\n%s {%d+}\r\n%s" % (len(a), a, len(b), b))
assert status.startswith("NO [TRYCREATE]"), status
lines = r.ok("STATUS Work (MESSAGES UIDNEXT)")
assert lines == ['* STATUS "Work" (MESSAGES 3 UIDNEXT 4)'], lines

# imaplib's single APPEND still works (and gets the same APPENDUID form).
cl = connect("alice@example.org")
typ, data = cl.append("Work", "(\\Draft)", None, message("four"))
assert typ == "OK" and b"[APPENDUID" in data[0] and data[0].split()[2] == b"4]", data
print("ok")
"#,
    );
}

#[test]
fn esearch_returns_min_max_count_all() {
    let dir = tempfile::tempdir().unwrap();
    let node = node_with_users(dir.path(), "esearch", "", &["alice@example.org"]);
    python(
        &node,
        r#"
from imaptest import *
from rawimap import Raw

r = Raw("alice@example.org")
assert "ESEARCH" in r.ok("CAPABILITY")[0].split()
for i in range(6):
    m = message("m%d" % i)
    r.ok(b"APPEND INBOX {%d+}\r\n%s" % (len(m), m))
r.ok("SELECT INBOX")
r.ok("STORE 1,3 +FLAGS (\\Seen)")
r.ok("STORE 6 +FLAGS (\\Deleted)")
r.ok("EXPUNGE")  # UIDs 1:5 remain, messages 1:5
r.ok("STORE 5 +FLAGS (\\Seen)")

lines = r.ok("SEARCH RETURN (MIN MAX COUNT ALL) UNSEEN")
assert lines == ['* ESEARCH (TAG "t%d") MIN 2 MAX 4 COUNT 2 ALL 2,4' % r.n], lines
lines = r.ok("UID SEARCH RETURN (COUNT) ALL")
assert lines == ['* ESEARCH (TAG "t%d") UID COUNT 5' % r.n], lines
# RETURN () means ALL (RFC 4731 section 3.1).
lines = r.ok("UID SEARCH RETURN () 1:*")
assert lines == ['* ESEARCH (TAG "t%d") UID ALL 1:5' % r.n], lines
# No match: only COUNT is returned.
lines = r.ok("SEARCH RETURN (MIN MAX COUNT ALL) KEYWORD nothing")
assert lines == ['* ESEARCH (TAG "t%d") COUNT 0' % r.n], lines
# Criteria are the ordinary ones, CHARSET included.
lines = r.ok('SEARCH RETURN (MAX) CHARSET UTF-8 SUBJECT "m3"')
assert lines == ['* ESEARCH (TAG "t%d") MAX 4' % r.n], lines
# SAVE (RFC 5182) is not offered.
lines, status = r.cmd("SEARCH RETURN (SAVE) ALL")
assert status.startswith("BAD"), status
# Plain SEARCH is untouched.
assert r.search("SEEN") == [1, 3, 5]
print("ok")
"#,
    );
}

#[test]
fn sort_and_thread_through_imaplib() {
    let dir = tempfile::tempdir().unwrap();
    let node = node_with_users(dir.path(), "sort", "", &["alice@example.org"]);
    python(
        &node,
        r#"
from imaptest import *

def mail(subject, frm, date, mid, refs="", body="x\r\n"):
    head = "From: %s\r\nTo: team@example.org\r\nSubject: %s\r\nDate: %s\r\nMessage-ID: <%s>\r\n" % (frm, subject, date, mid)
    if refs:
        head += "References: %s\r\n" % refs
    return (head + "\r\n" + body).encode()

c = connect("alice@example.org")
ok(c.capability())
for cap in ("SORT", "THREAD=ORDEREDSUBJECT", "THREAD=REFERENCES"):
    assert cap in c.capabilities, c.capabilities
# UID 1 goes away, so UIDs are sequence numbers + 1.
ok(c.append("INBOX", "(\\Deleted)", None, mail("gone", "x@y", "Mon, 13 Nov 2023 00:00:00 +0000", "gone@x")))
ok(c.select("INBOX"))
ok(c.expunge())
msgs = [
    mail("Project plan", "Carol <carol@example.org>", "Tue, 14 Nov 2023 10:00:00 +0000", "p1@x"),
    mail("Re: Project plan", "alice@example.org", "Tue, 14 Nov 2023 12:00:00 +0000", "p2@x", "<p1@x>"),
    mail("Lunch?", "Bob <bob@example.org>", "Tue, 14 Nov 2023 09:00:00 +0000", "l1@x"),
    mail("Re: Re: Project plan", "\"Bob\" <BOB@example.org>", "Tue, 14 Nov 2023 13:00:00 +0000", "p3@x", "<p1@x> <p2@x>"),
    mail("Fwd: Lunch?", "dave@example.org", "Mon, 13 Nov 2023 08:00:00 +0000", "l2@x"),
    mail("Re: Budget", "erin@example.org", "Tue, 14 Nov 2023 11:00:00 +0000", "b2@x", "<b1@missing>"),
    mail("Re: Budget", "frank@example.org", "Tue, 14 Nov 2023 11:30:00 +0000", "b3@x", "<b1@missing>"),
]
import datetime
base = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)
for i, m in enumerate(msgs):
    # Arrival (INTERNALDATE) runs backwards: the last appended arrived first.
    ok(c.append("INBOX", None, base - datetime.timedelta(hours=i), m))
ok(c.noop())

def sort(*args):
    return [int(x) for x in ok(c.sort(*args))[0].split()]

# RFC 5256 section 3: sent date, ties in mailbox order.
assert sort("(DATE)", "UTF-8", "ALL") == [5, 3, 1, 6, 7, 2, 4]
assert sort("(REVERSE DATE)", "UTF-8", "ALL") == [4, 2, 7, 6, 1, 3, 5]
# FROM: the first From address's mailbox, case-insensitively.
assert sort("(FROM)", "UTF-8", "ALL") == [2, 3, 4, 1, 5, 6, 7]
# SUBJECT: the base subject (section 2.1), then REVERSE DATE within.
assert sort("(SUBJECT)", "UTF-8", "ALL") == [6, 7, 3, 5, 1, 2, 4]
assert sort("(SUBJECT REVERSE DATE)", "US-ASCII", "ALL") == [7, 6, 3, 5, 4, 2, 1]
# ARRIVAL and SIZE come from the views, not the header.
assert sort("(ARRIVAL)", "UTF-8", "ALL") == [7, 6, 5, 4, 3, 2, 1]
by_size = [seq for _, seq in sorted((len(m), i + 1) for i, m in enumerate(msgs))]
assert sort("(SIZE)", "UTF-8", "ALL") == by_size
assert sort("(REVERSE SIZE)", "UTF-8", "ALL") == [seq for _, seq in sorted(((-len(m), i + 1) for i, m in enumerate(msgs)))]
# The search program narrows the set.
assert sort("(DATE)", "UTF-8", "FROM", "bob") == [3, 4]
# UID SORT answers UIDs.
typ, data = c.uid("SORT", "(DATE)", "UTF-8", "ALL")
assert typ == "OK" and [int(x) for x in data[0].split()] == [6, 4, 2, 7, 8, 3, 5], data
# A charset the server does not know: NO [BADCHARSET].
typ, data = c.sort("(DATE)", "KOI8-R", "ALL")
assert typ == "NO" and b"BADCHARSET" in data[0], (typ, data)
try:
    c.sort("(BOGUS)", "UTF-8", "ALL")
    raise AssertionError("BOGUS sort key accepted")
except imaplib.IMAP4.error as e:
    assert "BAD" in str(e) or "octet" in str(e), e

# THREAD ORDEREDSUBJECT: by base subject, each thread the earliest message
# with the others as its children, threads by their first message's date.
assert ok(c.thread("ORDEREDSUBJECT", "UTF-8", "ALL")) == [b"(5 3)(1 (2)(4))(6 7)"]
# THREAD REFERENCES: 1 <- 2 <- 4 by References; 5 ("Fwd: Lunch?") joins 3
# by subject; 6 and 7 answer a message that is not here.
assert ok(c.thread("REFERENCES", "UTF-8", "ALL")) == [b"(3 5)(1 2 4)((6)(7))"]
typ, data = c.uid("THREAD", "REFERENCES", "UTF-8", "ALL")
assert typ == "OK" and data == [b"(4 6)(2 3 5)((7)(8))"], data
# No match: an empty THREAD response.
data = ok(c.thread("REFERENCES", "UTF-8", "KEYWORD", "none"))
assert data == [b""], data
print("ok")
"#,
    );
}

#[test]
fn compress_deflate_both_directions() {
    let dir = tempfile::tempdir().unwrap();
    let node = node_with_users(dir.path(), "deflate", "", &["alice@example.org"]);
    let cert = dir.path().join("data/tls/cert.pem");
    let imaps_port = node.addr("imaps").rsplit_once(':').unwrap().1.to_string();
    let script = r#"
import re, socket, ssl, zlib
from imaptest import *

# A large, compressible message, stored before compression starts.
body = "".join("line %06d of a long and repetitive message body\r\n" % i for i in range(20000))
big = message("big", body=body)
c = connect("alice@example.org")
ok(c.append("INBOX", None, None, big))
c.logout()

def session(tls):
  # Over plain TCP and over implicit TLS (compression inside TLS).
  if tls:
    ctx = ssl.create_default_context(cafile="@CERT@")
    s = ctx.wrap_socket(socket.create_connection((HOST, @IMAPS@), timeout=20), server_hostname=HOST)
  else:
    s = socket.create_connection((HOST, PORT), timeout=20)
  # Unbuffered: no compressed byte may be read ahead with the plain lines.
  f = s.makefile("rb", buffering=0)
  assert f.readline().startswith(b"* OK")
  def plain(cmd):
      s.sendall(cmd + b"\r\n")
      lines = []
      while True:
          l = f.readline()
          lines.append(l)
          if l.startswith(cmd.split()[0] + b" "):
              return lines
  # Not before login (RFC 4978 section 3: authenticated state).
  assert plain(b"a0 COMPRESS DEFLATE")[-1].startswith(b"a0 BAD"), "COMPRESS before login"
  lines = plain(b"a1 LOGIN alice@example.org secret")
  assert b"COMPRESS=DEFLATE" in lines[-1], lines
  # From here both directions are raw DEFLATE (RFC 1951, no zlib header).
  # The first compressed command goes out with COMPRESS, before its OK.
  comp = zlib.compressobj(6, zlib.DEFLATED, -15)
  early = comp.compress(b"a2b NOOP\r\n") + comp.flush(zlib.Z_SYNC_FLUSH)
  s.sendall(b"a2 COMPRESS DEFLATE\r\n" + early)
  assert f.readline() == b"a2 OK DEFLATE active\r\n"
  decomp = zlib.decompressobj(-15)
  wire = {"in": 0, "out": 0}
  pending = [b""]
  def send(cmd):
      data = comp.compress(cmd + b"\r\n") + comp.flush(zlib.Z_SYNC_FLUSH)
      wire["out"] += len(data)
      s.sendall(data)
  def until(tag):
      while True:
          m = re.search(rb"(^|\r\n)" + tag + rb" [^\r\n]*\r\n", pending[0])
          if m:
              out, pending[0] = pending[0][:m.end()], pending[0][m.end():]
              return out
          chunk = s.recv(65536)
          assert chunk, "connection closed; got %r" % pending[0][-200:]
          wire["in"] += len(chunk)
          pending[0] += decomp.decompress(chunk)

  assert b"a2b OK" in until(b"a2b")
  send(b"a3 CAPABILITY")
  out = until(b"a3")
  assert b"COMPRESS=DEFLATE" not in out and b"a3 OK" in out, out
  send(b"a4 COMPRESS DEFLATE")
  assert b"a4 NO [COMPRESSIONACTIVE]" in until(b"a4")
  send(b"a5 SELECT INBOX")
  assert b"* 1 EXISTS" in until(b"a5")
  before = wire["in"]
  send(b"a6 FETCH 1 BODY.PEEK[]")
  out = until(b"a6")
  assert big in out and b"a6 OK" in out, len(out)
  got = wire["in"] - before
  assert got * 5 < len(big), (got, len(big))
  # Pipelined commands in one compressed write.
  send(b"a7 NOOP\r\na8 SEARCH ALL")
  out = until(b"a8")
  assert b"a7 OK" in out and b"* SEARCH 1" in out, out
  send(b"a9 LOGOUT")
  assert b"* BYE" in until(b"a9")
  print("tls=%s: fetched %d octets as %d compressed" % (tls, len(big), got))

session(False)
session(True)
"#;
    let out = python(
        &node,
        &script.replace("@CERT@", cert.to_str().unwrap()).replace("@IMAPS@", &imaps_port),
    );
    assert!(out.contains("tls=True"), "{out}");
    println!("{out}");
}

#[test]
fn hostile_extension_commands_get_bad_with_the_place() {
    let dir = tempfile::tempdir().unwrap();
    let node = node_with_users(dir.path(), "hostilex", "", &["alice@example.org"]);
    python(
        &node,
        r#"
from imaptest import *
from rawimap import Raw

bad = [
    b'LIST (SUBSCRIBED "" *',
    b'LIST "" (' + b'"a" ' * 2000 + b')',
    b'LIST ' + b'(' * 5000 + b' "" *',
    b'LIST "" * RETURN (STATUS (MESSAGES',
    b'APPEND INBOX UTF8 (~{3+}\r\nabc',
    b'APPEND INBOX (' + b' '.join(b'k%d' % i for i in range(1100)) + b') {1+}\r\nx {1+}\r\ny',
    b'APPEND INBOX "99-Xyz-2026 99:99:99 +9999" {1+}\r\nx',
    b'SORT (DATE',
    b'SORT (REVERSE) UTF-8 ALL',
    b'THREAD',
    b'UID THREAD REFERENCES UTF-8',
    b'SEARCH RETURN (',
    b'SEARCH RETURN (MIN) \xff\xfe',
    b'ENABLE',
    b'LIST "" "\xc3\xa9"',
]
r = Raw("alice@example.org")
r.ok("SELECT INBOX")
for i, cmd in enumerate(bad):
    lines, status = r.cmd(cmd)
    assert status.startswith("BAD"), (cmd[:60], status)
    # The session still answers.
    r.ok("NOOP")
# Most answers say where parsing failed.
lines, status = r.cmd(b'LIST (SUBSCRIBED BOGUS) "" *')
at = len("t%d LIST (SUBSCRIBED " % r.n)
assert status.startswith("BAD") and status.endswith("at octet %d" % at), status
lines, status = r.cmd(b'APPEND INBOX {1+}\r\nx "1-Jan-2026" {1+}\r\ny')
at = len("t%d APPEND INBOX {1+}\r\nx " % r.n)
assert status.startswith("BAD") and status.endswith("bad date-time at octet %d" % at), status
print("ok")
"#,
    );
}
