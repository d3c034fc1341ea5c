//! RFC 3501 answers that strict clients and compliance suites check, each
//! against the RFC's text: keywords announced in FLAGS before a FETCH shows
//! them (§7.2.6, §7.1 PERMANENTFLAGS), CREATE with a trailing hierarchy
//! separator (§6.3.3), mailbox names that are not modified UTF-7 (§5.1.3).

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
