//! RFC 3501 answers that strict clients and compliance suites check, each
//! against the RFC's text: keywords announced in FLAGS before a FETCH shows
//! them (§7.2.6, §7.1 PERMANENTFLAGS), CREATE with a trailing hierarchy
//! separator (§6.3.3), mailbox names that are not modified UTF-7 (§5.1.3),
//! date searches by the date as written (§6.4.4) and address searches.

mod common;
use common::{node_with_users, python};

#[test]
fn keywords_are_announced_in_flags_before_fetch_shows_them() {
    let dir = tempfile::tempdir().unwrap();
    let node = node_with_users(dir.path(), "kw", "", &["alice@example.org"]);
    python(
        &node,
        r#"
from imaptest import *
from rawimap import Raw

a = Raw("alice@example.org")
b = Raw("alice@example.org")
a.ok("CREATE Other")
for i in range(3):
    a.ok("APPEND INBOX {%d+}\r\n%s" % (len(message("m%d" % i)), message("m%d" % i).decode()))

# SELECT: system flags, PERMANENTFLAGS with \* (new keywords may be made).
lines = a.ok("SELECT INBOX")
assert a.announced == set(), lines
assert "\\*" in a.permanent, lines
b.ok("SELECT INBOX")

# STORE a new keyword: FLAGS and PERMANENTFLAGS announce it before the FETCH.
lines = a.ok("STORE 1 +FLAGS ($kw1)")
flags_at = [i for i, l in enumerate(lines) if l.startswith("* FLAGS")]
fetch_at = [i for i, l in enumerate(lines) if " FETCH " in l]
assert flags_at and fetch_at and flags_at[0] < fetch_at[0], lines
assert "$kw1" in a.announced and {"$kw1", "\\*"} <= a.permanent, lines
# Silent STORE of another: still announced (the client will see it later).
lines = a.ok("STORE 2 +FLAGS.SILENT (Work)")
assert "Work" in a.announced and not any(" FETCH " in l for l in lines), lines
# A known keyword is not announced again.
lines = a.ok("STORE 3 +FLAGS ($kw1)")
assert not any(l.startswith("* FLAGS") for l in lines), lines

# The other session learns the keywords with the flag changes (the checker
# in rawimap fails on any FETCH with an unannounced keyword).
lines = b.ok("NOOP")
assert {"$kw1", "Work"} <= b.announced, lines
lines = b.ok("FETCH 1:* FLAGS")
assert len([l for l in lines if " FETCH " in l]) == 3, lines

# SELECT and EXAMINE list the mailbox's keywords.
for verb in ("EXAMINE", "SELECT"):
    c = Raw("alice@example.org")
    lines = c.ok(verb + " INBOX")
    assert c.announced == {"$kw1", "Work"}, lines
    assert {"$kw1", "Work", "\\*"} <= c.permanent, lines
    c.ok("FETCH 1:* FLAGS")

# COPY a message with a keyword this mailbox has never seen into a mailbox
# another session has selected: it learns the keyword with the new message.
b.ok("SELECT Other")
a.ok("STORE 1 +FLAGS (Copied)")
lines = a.ok("COPY 1 Other")
lines = b.ok("NOOP")
assert "Copied" in b.announced and any(l.endswith("EXISTS") for l in lines), lines
b.ok("FETCH 1:* (UID FLAGS)")
# COPY into the selected mailbox itself.
a.ok("STORE 2 +FLAGS (Selfcopy)")
b.ok("SELECT INBOX")
lines = a.ok("COPY 2 INBOX")
assert "Selfcopy" in a.announced, lines
a.ok("FETCH 1:* FLAGS")

# SEARCH: the keyword set by another session is announced with the SEARCH
# response's updates, and SEARCH KEYWORD finds it.
a.ok("STORE 3 +FLAGS (Searched)")
assert b.search("KEYWORD Searched") == [3]
assert "Searched" in b.announced
assert b.search("UNKEYWORD $kw1") == [2, 4]
b.ok("FETCH 1:* FLAGS")

# APPEND with a new keyword into the selected mailbox.
msg = message("appended")
lines = a.ok(b"APPEND INBOX ($Appended) {%d+}\r\n" % len(msg) + msg)
lines = a.ok("NOOP")
assert "$Appended" in a.announced, lines
a.ok("FETCH * FLAGS")
b.ok("NOOP")
b.ok("FETCH 1:* FLAGS")
print("ok")
"#,
    );
}

#[test]
fn create_with_trailing_separator_and_names_that_are_not_modified_utf7() {
    let dir = tempfile::tempdir().unwrap();
    let node = node_with_users(dir.path(), "names", "", &["alice@example.org"]);
    python(
        &node,
        r#"
from imaptest import *
from rawimap import Raw

a = Raw("alice@example.org")
# RFC 3501 6.3.3: a trailing separator declares the intent to create names
# under it; the mailbox created is the name without it.
a.ok("CREATE Projects/")
lines = a.ok('LIST "" Projects')
assert lines == ['* LIST (\\HasNoChildren) "/" "Projects"'], lines
a.ok("CREATE Projects/2024/")
lines = a.ok('LIST "" "Projects*"')
assert sorted(lines) == ['* LIST (\\HasChildren) "/" "Projects"', '* LIST (\\HasNoChildren) "/" "Projects/2024"'], lines
_, status = a.cmd("CREATE Projects/")
assert status.startswith("NO [ALREADYEXISTS]"), status
# Only one trailing separator is a declaration; an empty level is not a name.
_, status = a.cmd("CREATE a//")
assert status.startswith("NO"), status
_, status = a.cmd('CREATE "/"')
assert status.startswith("NO"), status

# Names that are not valid modified UTF-7 (RFC 3501 5.1.3) are refused with
# NO -- they are valid astrings, so never BAD -- and the session goes on.
for bad in ["&Jjo", "&-&", "a&Jjo!-b", "&AGE-&AGE"]:
    for cmd in ["CREATE %s", "SELECT %s", "EXAMINE %s", "DELETE %s", "STATUS %s (MESSAGES)",
                "SUBSCRIBE %s", "RENAME INBOX/x %s", "APPEND %s {1+}\r\nx"]:
        _, status = a.cmd(cmd % ('"%s"' % bad))
        assert status.startswith("NO"), (cmd, bad, status)
a.ok("SELECT INBOX")
_, status = a.cmd('COPY 1:* "&Jjo"')
assert status.startswith("NO") or status.startswith("OK"), status
_, status = a.cmd('MOVE 1:* "&Jjo"')
assert status.startswith("NO") or status.startswith("OK"), status
a.ok("NOOP")
# Valid modified UTF-7 still works, and comes back as sent.
a.ok('CREATE "Archiv/&ZeVnLIqe-/"')
lines = a.ok('LIST "" "Archiv/&ZeVnLIqe-"')
assert lines == ['* LIST (\\HasNoChildren) "/" "Archiv/&ZeVnLIqe-"'], lines
a.ok("LOGOUT")
print("ok")
"#,
    );
}

#[test]
fn date_searches_compare_the_date_as_written() {
    let dir = tempfile::tempdir().unwrap();
    let node = node_with_users(dir.path(), "dates", "", &["alice@example.org"]);
    python(
        &node,
        r#"
from imaptest import *
from rawimap import Raw
import datetime

# (internal date, Date: header) as written; the date part is what counts,
# whatever the time and zone (RFC 3501 6.4.4). Most instants fall on another
# day in UTC than as written.
cases = [
    ("24-Mar-2007 23:00:00 +0200", "Tue, 3 Apr 2007 23:00:00 +0200"),
    ("25-Mar-2007 00:00:00 +0200", "Wed, 4 Apr 2007 00:00:00 +0200"),
    ("25-Mar-2007 23:59:59 -0500", "Wed, 4 Apr 2007 23:59:59 -0500"),
    ("26-Mar-2007 00:30:00 +1400", "Thu, 5 Apr 2007 00:30:00 +1400"),
    ("25-Mar-2007 12:00:00 +0000", "Wed, 4 Apr 2007 12:00:00 GMT"),
    ("27-Mar-2007 00:00:00 -1200", "Fri, 6 Apr 2007 00:00:00 -1200"),
    ("26-Mar-2007 23:59:59 +0000", "06 Apr 2007 23:59 +0100"),
    ("25-Mar-2007 01:00:00 -0000", None),
]
a = Raw("alice@example.org")
for idate, sent in cases:
    hdr = ("Date: %s\r\n" % sent) if sent else ""
    msg = ("From: a@example.org\r\nSubject: d\r\n%s\r\nbody\r\n" % hdr).encode()
    a.ok(b'APPEND INBOX "%s" {%d+}\r\n' % (idate.encode(), len(msg)) + msg)
a.ok("SELECT INBOX")

def written_day(text):
    """The date part as written: `dd-Mon-yyyy ...` or `[Day,] dd Mon yyyy ...`."""
    if "-" in text.split()[0]:
        return datetime.datetime.strptime(text.split()[0], "%d-%b-%Y").date()
    words = text.split(",")[-1].split()
    return datetime.datetime.strptime(" ".join(words[:3]), "%d %b %Y").date()

internal = [written_day(i) for i, _ in cases]
sent = [written_day(s) if s else None for _, s in cases]
wrong = []
def check(query, want):
    got = a.search(query)
    if got != want:
        wrong.append("SEARCH %s: got %s, want %s" % (query, got, want))

for d in range(23, 29):
    q = datetime.date(2007, 3, d)
    text = "%d-Mar-2007" % d
    check("BEFORE " + text, [n + 1 for n, x in enumerate(internal) if x < q])
    check("ON " + text, [n + 1 for n, x in enumerate(internal) if x == q])
    check("SINCE " + text, [n + 1 for n, x in enumerate(internal) if x >= q])
    # The internal date never decides a SENT* key.
    check("SENTON " + text, [])
for d in range(2, 8):
    q = datetime.date(2007, 4, d)
    text = "%d-Apr-2007" % d
    check("SENTBEFORE " + text, [n + 1 for n, x in enumerate(sent) if x and x < q])
    check("SENTON " + text, [n + 1 for n, x in enumerate(sent) if x == q])
    check("SENTSINCE " + text, [n + 1 for n, x in enumerate(sent) if x and x >= q])
    check("ON " + text, [])
# Ranges and negation, as clients combine them.
check("SINCE 25-Mar-2007 BEFORE 26-Mar-2007", [2, 3, 5, 8])
check("NOT SENTSINCE 1-Jan-1970", [8])
check("OR SENTON 3-Apr-2007 ON 27-Mar-2007", [1, 6])
assert not wrong, "\n".join(wrong)
print("ok")
"#,
    );
}

#[test]
fn address_searches_find_substrings_of_the_addresses() {
    let dir = tempfile::tempdir().unwrap();
    let node = node_with_users(dir.path(), "addr", "", &["alice@example.org"]);
    python(
        &node,
        r#"
from imaptest import *
from rawimap import Raw

headers = [
    "From: user-from@domain.org\r\nTo: user-to@domain.org\r\nCc: user-cc@domain.org\r\nBcc: user-bcc@domain.org",
    "From: Real From <User-From@Domain.ORG>\r\nTo: \"Real To\" <user-to@domain.org>\r\nCc: Real Cc <user-cc@domain.org>",
    "From: <user-from (comment)@ (comment) domain.org>\r\nTo: <user-to@domain.org>",
    "From: user-from@domain.org (Real From)\r\nTo: user-to@domain.org (Real To)",
    "From: other@domain.org,\r\n user-from2@domain.org\r\nCc: user-cc@domain.org",
    "To: group: g1@domain.org, g2@domain.org;,\r\n  group2: g3@domain.org;",
    "From: =?UTF-8?Q?J=C3=B6rg_M=C3=BCller?= <jorg@domain.org>",
    "From: \"user.name\"@domain.org\r\nBcc: Hidden <BCC-user@domain.org>",
]
a = Raw("alice@example.org")
for h in headers:
    msg = ("%s\r\nSubject: a\r\n\r\nbody\r\n" % h).encode()
    a.ok(b"APPEND INBOX {%d+}\r\n" % len(msg) + msg)
a.ok("SELECT INBOX")
cases = [
    ("FROM user-from@domain.org", [1, 2, 3, 4]),
    ("FROM USER-FROM@DOMAIN.ORG", [1, 2, 3, 4]),
    ('FROM "real from"', [2, 4]),
    ("FROM ser-fro", [1, 2, 3, 4, 5]),
    ("FROM user-from2", [5]),
    ("FROM other", [5]),
    ("TO user-to@domain.org", [1, 2, 3, 4]),
    ('TO "real to"', [2, 4]),
    ("TO group", [6]),
    ("TO group2", [6]),
    ("TO g3@domain.org", [6]),
    ("TO g4", []),
    ("CC user-cc@domain.org", [1, 2, 5]),
    ("CC realcc", []),
    ('CC "real cc"', [2]),
    ("BCC user-bcc", [1]),
    ("BCC bcc-user@DOMAIN", [8]),
    ("BCC hidden", [8]),
    ('HEADER FROM ""', [1, 2, 3, 4, 5, 7, 8]),
    ('HEADER BCC ""', [1, 8]),
    ("FROM domain.org", [1, 2, 3, 4, 5, 7, 8]),
    (b"CHARSET UTF-8 FROM {7+}\r\nj\xc3\xb6rg m", [7]),
    (b"CHARSET UTF-8 FROM {7+}\r\nM\xc3\x9cLLER", [7]),
]
wrong = []
for q, want in cases:
    got = a.search(q)
    if got != want:
        wrong.append("SEARCH %r: got %s, want %s" % (q, got, want))
assert not wrong, "\n".join(wrong)
print("ok")
"#,
    );
}
