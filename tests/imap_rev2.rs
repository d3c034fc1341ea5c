//! IMAP4rev2 (RFC 9051) next to IMAP4rev1 on one server, through a raw
//! socket client that sends exact command bytes (tests/py/rawimap.py) and
//! through imapflow, a real client that enables IMAP4rev2 by itself. Each
//! test is one behaviour of RFC 9051 where it differs from RFC 3501; a
//! session that has not sent `ENABLE IMAP4rev2` must behave as before.

mod common;
use common::{node_with_users, python};

/// The Python prelude of every test: a raw client logged in as alice, and
/// `add(r, subject, flags)` to APPEND a small message.
const PRELUDE: &str = r#"
from rawimap import Raw

def add(r, subject, flags=""):
    msg = ("From: a@example.org\r\nTo: b@example.org\r\nSubject: %s\r\n"
           "Date: Tue, 14 Nov 2023 22:13:20 +0000\r\n\r\nbody of %s\r\n" % (subject, subject)).encode()
    r.ok(b"APPEND INBOX (%s) {%d+}\r\n%s" % (flags.encode(), len(msg), msg))

def rev2(user="alice@example.org"):
    r = Raw(user)
    assert r.ok("ENABLE IMAP4rev2") == ["* ENABLED IMAP4rev2"]
    return r

def tag(r):
    return "t%d" % r.n
"#;

fn run(id: &str, script: &str) {
    let dir = tempfile::tempdir().unwrap();
    let node = node_with_users(dir.path(), id, "", &["alice@example.org"]);
    python(&node, &format!("{PRELUDE}\n{script}"));
}

#[test]
fn imap4rev2_is_advertised_and_enabled_by_enable() {
    run(
        "r2caps",
        r#"
r = Raw()
lines = r.ok("CAPABILITY")
caps = lines[0].split()[2:]
# RFC 9051 section 6.1.1 / Appendix A: both revisions side by side, and
# STATUS=SIZE (RFC 8438, part of IMAP4rev2).
assert "IMAP4rev1" in caps and "IMAP4rev2" in caps and "STATUS=SIZE" in caps, caps
# ENABLE is for the authenticated state (RFC 5161 section 3.1).
lines, status = r.cmd("ENABLE IMAP4rev2")
assert status.startswith("BAD"), status
r.ok("LOGIN alice@example.org secret")
# RFC 9051 section 6.3.1: the ENABLED response names what was enabled now,
# in any case the client wrote it; once on, it stays on.
assert r.ok("ENABLE imap4REV2") == ["* ENABLED IMAP4rev2"]
assert r.ok("ENABLE IMAP4rev2") == ["* ENABLED"]
"#,
    );
}

#[test]
fn a_rev1_session_is_unchanged() {
    run(
        "r2rev1",
        r#"
r = Raw("alice@example.org")
add(r, "one", "\\Seen")
add(r, "two")
r.ok('CREATE "Entw&APw-rfe"')
lines = r.ok("SELECT INBOX")
# RFC 3501 section 6.3.1: RECENT and the UNSEEN code, no LIST.
assert "* 0 RECENT" in lines, lines
assert "* OK [UNSEEN 2] First unseen" in lines, lines
assert not any(l.startswith("* LIST") for l in lines), lines
assert r.ok("SEARCH ALL") == ["* SEARCH 1 2"]
assert r.ok("UID SEARCH UNSEEN") == ["* SEARCH 2"]
assert r.ok("SEARCH RECENT") == ["* SEARCH"]
assert r.ok('STATUS INBOX (RECENT MESSAGES)') == ['* STATUS "INBOX" (RECENT 0 MESSAGES 2)']
# Names stay modified UTF-7; 8-bit quoted strings are refused.
assert r.ok('LIST "" "Entw*"') == ['* LIST (\\HasNoChildren) "/" "Entw&APw-rfe"']
lines, status = r.cmd('CREATE "Caf\xc3\xa9"'.encode("latin-1"))
assert status.startswith("BAD"), status
# SEARCHRES belongs to IMAP4rev2 sessions only: SAVE is an unknown option.
lines, status = r.cmd("SEARCH RETURN (SAVE) ALL")
assert status == "BAD SEARCH: unknown SEARCH return option at octet %d" % (len(tag(r)) + 16), status
# RFC 3501's numbers are 32 bits.
lines, status = r.cmd("SEARCH LARGER 5000000000")
assert status.startswith("BAD"), status
lines, status = r.cmd("FETCH $ (FLAGS)")
assert status.startswith("BAD"), status
# No CLOSED when one SELECT replaces another (no QRESYNC either).
lines = r.ok("SELECT INBOX")
assert not any("[CLOSED]" in l for l in lines), lines
# Parent-only names are \Noselect without \NonExistent in RFC 3501's LIST.
r.ok("CREATE a/b/c")
r.ok("DELETE a/b")
assert r.ok('LIST "" "a/%"') == ['* LIST (\\Noselect \\HasChildren) "/" "a/b"']
"#,
    );
}

#[test]
fn enable_imap4rev2_does_not_reach_other_sessions() {
    run(
        "r2iso",
        r#"
a = rev2()
b = Raw("alice@example.org")
add(a, "one")
a.ok("SELECT INBOX")
b.ok("SELECT INBOX")
assert a.ok("SEARCH ALL") == ['* ESEARCH (TAG "%s") ALL 1' % tag(a)]
assert b.ok("SEARCH ALL") == ["* SEARCH 1"]
b.ok("CREATE \"Entw&APw-rfe\"")
assert a.ok('LIST "" "Entw*"') == ['* LIST (\\HasNoChildren) "/" "Entwürfe"']
assert b.ok('LIST "" "Entw*"') == ['* LIST (\\HasNoChildren) "/" "Entw&APw-rfe"']
lines = b.ok("SELECT INBOX")
assert "* 0 RECENT" in lines, lines
"#,
    );
}

#[test]
fn select_has_no_recent_no_unseen_and_a_list_response() {
    run(
        "r2select",
        r#"
r = rev2()
add(r, "one", "\\Seen")
add(r, "two")
r.ok("CREATE Archive/2024")
r.ok("SUBSCRIBE INBOX")
lines = r.ok("SELECT INBOX")
# RFC 9051 section 6.3.2: FLAGS, EXISTS, LIST, PERMANENTFLAGS, UIDNEXT and
# UIDVALIDITY; RECENT is gone with \Recent and UNSEEN is no response code.
assert "* 2 EXISTS" in lines, lines
assert not any("RECENT" in l or "[UNSEEN" in l for l in lines), lines
assert '* LIST (\\HasNoChildren \\Subscribed) "/" "INBOX"' in lines, lines
assert any(l.startswith("* OK [UIDVALIDITY ") for l in lines), lines
assert any(l.startswith("* OK [UIDNEXT 3]") for l in lines), lines
assert any(l.startswith("* OK [PERMANENTFLAGS (") for l in lines), lines
# Another SELECT (or EXAMINE) closes this one: OK [CLOSED] first (RFC 9051
# section 7.1), then the new mailbox's responses.
lines = r.ok("EXAMINE Archive")
assert lines[0].startswith("* OK [CLOSED]"), lines
# Archive is a special-use name (RFC 6154), subscribed when created.
assert '* LIST (\\HasChildren \\Archive \\Subscribed) "/" "Archive"' in lines, lines
# CLOSE and UNSELECT close without opening: no CLOSED (section 7.1).
assert r.ok("UNSELECT") == []
r.ok("SELECT INBOX")
assert r.ok("CLOSE") == []
# Nor is there CLOSED when nothing was selected.
lines = r.ok("SELECT INBOX")
assert not any("[CLOSED]" in l for l in lines), lines
"#,
    );
}

#[test]
fn search_answers_with_esearch() {
    run(
        "r2search",
        r#"
r = rev2()
add(r, "one", "\\Seen")
add(r, "two")
add(r, "three", "\\Seen")
r.ok("SELECT INBOX")
# RFC 9051 section 6.4.4: ESEARCH (RFC 4731 form) for every SEARCH, ALL
# when no RETURN was given; UID SEARCH says UID.
assert r.ok("SEARCH SEEN") == ['* ESEARCH (TAG "%s") ALL 1,3' % tag(r)]
assert r.ok("UID SEARCH ALL") == ['* ESEARCH (TAG "%s") UID ALL 1:3' % tag(r)]
# Nothing found: no ALL at all (RFC 9051 section 7.3.4).
assert r.ok("SEARCH SUBJECT nowhere") == ['* ESEARCH (TAG "%s")' % tag(r)]
assert r.ok("SEARCH RETURN (MIN COUNT) SEEN") == ['* ESEARCH (TAG "%s") MIN 1 COUNT 2' % tag(r)]
assert r.ok('SEARCH CHARSET UTF-8 SUBJECT "two"') == ['* ESEARCH (TAG "%s") ALL 2' % tag(r)]
# LARGER and SMALLER take 64-bit numbers (RFC 9051 section 9, number64).
assert r.ok("SEARCH SMALLER 5000000000") == ['* ESEARCH (TAG "%s") ALL 1:3' % tag(r)]
assert r.ok("UID SEARCH OR LARGER 5000000000 SEEN") == ['* ESEARCH (TAG "%s") UID ALL 1,3' % tag(r)]
assert r.ok("SEARCH NOT SMALLER 9223372036854775807") == ['* ESEARCH (TAG "%s")' % tag(r)]
lines, status = r.cmd("SEARCH LARGER 9223372036854775808")
assert status.startswith("BAD"), status
# RECENT, NEW and OLD are no search keys of RFC 9051 (no \Recent).
for key in ("RECENT", "NEW", "OLD", "NOT (SEEN OR RECENT ALL)"):
    lines, status = r.cmd("SEARCH " + key)
    assert status.startswith("BAD"), (key, status)
"#,
    );
}

#[test]
fn searchres_saves_a_result_for_dollar() {
    run(
        "r2saveres",
        r#"
r = rev2()
for i in range(1, 6):
    add(r, "m%d" % i, "\\Seen" if i % 2 else "")
r.ok("CREATE Kept")
r.ok("SELECT INBOX")
# RFC 5182 section 2.1 (RFC 9051 section 6.4.4.1): SAVE alone answers no
# ESEARCH; `$` then stands for the messages found.
assert r.ok("SEARCH RETURN (SAVE) SEEN") == []
assert r.ok("FETCH $ (UID)") == ["* 1 FETCH (UID 1)", "* 3 FETCH (UID 3)", "* 5 FETCH (UID 5)"]
assert r.ok("UID SEARCH UID $") == ['* ESEARCH (TAG "%s") UID ALL 1,3,5' % tag(r)]
assert r.ok("SEARCH NOT $") == ['* ESEARCH (TAG "%s") ALL 2,4' % tag(r)]
# The argument of SUBJECT is a string, not a set: `$` stays `$`.
assert r.ok("SEARCH SUBJECT $") == ['* ESEARCH (TAG "%s")' % tag(r)]
lines = r.ok("UID COPY $ Kept")
assert lines == [], lines
assert r.ok("STATUS Kept (MESSAGES)") == ['* STATUS "Kept" (MESSAGES 3)']
# SAVE with MIN and MAX keeps only those two (section 2.1); with the others
# it answers as without SAVE.
assert r.ok("SEARCH RETURN (SAVE MIN MAX) ALL") == ['* ESEARCH (TAG "%s") MIN 1 MAX 5' % tag(r)]
assert r.ok("UID SEARCH $") == ['* ESEARCH (TAG "%s") UID ALL 1,5' % tag(r)]
# An expunged message drops out of `$`.
r.ok("STORE $ +FLAGS.SILENT (\\Deleted)")
r.ok("UID EXPUNGE 1")
assert r.ok("UID FETCH $ (UID)") == ["* 4 FETCH (UID 5)"]
# A SEARCH with SAVE answered BAD leaves it as it was; one answered NO
# empties it (RFC 5182 section 2.1).
assert r.ok("SEARCH RETURN (SAVE) ALL") == []
lines, status = r.cmd("SEARCH RETURN (SAVE) RECENT")
assert status.startswith("BAD"), status
assert r.ok("UID FETCH $ (UID)") == ["* 1 FETCH (UID 2)", "* 2 FETCH (UID 3)", "* 3 FETCH (UID 4)", "* 4 FETCH (UID 5)"]
lines, status = r.cmd("SEARCH RETURN (SAVE) CHARSET X-NONE ALL")
assert status.startswith("NO [BADCHARSET"), status
assert r.ok("FETCH $ (UID)") == []
r.ok("SEARCH RETURN (SAVE) ALL")
# A new SELECT empties it: `$` is then an empty set (no message, no error).
r.ok("SELECT INBOX")
assert r.ok("FETCH $ (FLAGS)") == []
assert r.ok("SEARCH $") == ['* ESEARCH (TAG "%s")' % tag(r)]
assert r.ok("UID SEARCH UID $") == ['* ESEARCH (TAG "%s") UID' % tag(r)]
assert r.ok("UID MOVE $ Kept") == []
"#,
    );
}

#[test]
fn mailbox_names_are_utf8_on_the_wire() {
    run(
        "r2utf8",
        r#"
r = rev2()
# RFC 9051 section 5.1: names are UTF-8, not modified UTF-7, and quoted
# strings may carry UTF-8.
r.ok('CREATE "Entwürfe"'.encode())
r.ok('CREATE "A&B"')
assert r.ok('LIST "" "Entw*"') == ['* LIST (\\HasNoChildren) "/" "Entwürfe"']
assert r.ok('LIST "" "A&*"') == ['* LIST (\\HasNoChildren) "/" "A&B"']
add(r, "x")
r.ok('SELECT "Entwürfe"'.encode())
assert r.ok('STATUS "A&B" (MESSAGES)') == ['* STATUS "A&B" (MESSAGES 0)']
# The same mailboxes to a rev1 session: modified UTF-7.
o = Raw("alice@example.org")
assert o.ok('LIST "" "Entw*"') == ['* LIST (\\HasNoChildren) "/" "Entw&APw-rfe"']
assert o.ok('LIST "" "A&-*"') == ['* LIST (\\HasNoChildren) "/" "A&-B"']
"#,
    );
}

#[test]
fn status_size_and_deleted() {
    run(
        "r2status",
        r#"
r = rev2()
add(r, "one", "\\Deleted")
add(r, "two")
r.ok("SELECT INBOX")
sizes = []
for l in r.ok("FETCH 1:* (RFC822.SIZE)"):
    sizes.append(int(l.rsplit(" ", 1)[1].rstrip(")")))
# RFC 8438 / RFC 9051 section 6.3.11: SIZE is the sum of the messages'
# RFC822.SIZE, DELETED the number with \Deleted.
want = '* STATUS "INBOX" (MESSAGES 2 SIZE %d DELETED 1)' % sum(sizes)
assert r.ok("STATUS INBOX (MESSAGES SIZE DELETED)") == [want]
# RECENT is no status-att of RFC 9051.
lines, status = r.cmd("STATUS INBOX (RECENT)")
assert status.startswith("BAD"), status
# LIST-STATUS takes SIZE too.
lines = r.ok('LIST "" INBOX RETURN (STATUS (SIZE))')
assert lines[1] == '* STATUS "INBOX" (SIZE %d)' % sum(sizes), lines
# STATUS=SIZE is advertised to every session, so rev1 has SIZE as well
# (and keeps RECENT).
o = Raw("alice@example.org")
assert o.ok("STATUS INBOX (SIZE RECENT)") == ['* STATUS "INBOX" (SIZE %d RECENT 0)' % sum(sizes)]
lines, status = o.cmd("STATUS INBOX (SIZE BOGUS)")
assert status.startswith("BAD") and "octet" in status, status
"#,
    );
}

#[test]
fn response_codes_of_rfc_5530() {
    run(
        "r2codes",
        r#"
r = rev2()
add(r, "one")
r.ok("CREATE Exists")
# RFC 9051 section 7.1: TRYCREATE when the target of APPEND, COPY or MOVE
# is missing; ALREADYEXISTS; NONEXISTENT.
lines, status = r.cmd(b"APPEND Missing {3+}\r\nx\r\n")
assert status.startswith("NO [TRYCREATE]"), status
r.ok("SELECT INBOX")
for cmd in ("COPY 1 Missing", "UID MOVE 1 Missing"):
    lines, status = r.cmd(cmd)
    assert status.startswith("NO [TRYCREATE]"), (cmd, status)
r.ok("CREATE INBOX/x")
for cmd in ("CREATE Exists", "RENAME INBOX/x Exists"):
    lines, status = r.cmd(cmd)
    assert status.startswith("NO [ALREADYEXISTS]"), (cmd, status)
for cmd in ("DELETE Missing", "SELECT Missing", "STATUS Missing (MESSAGES)", "RENAME Missing Other"):
    lines, status = r.cmd(cmd)
    assert status.startswith("NO [NONEXISTENT]"), (cmd, status)
"#,
    );
}

#[test]
fn list_says_nonexistent() {
    run(
        "r2list",
        r#"
r = rev2()
r.ok("CREATE a/b/c")
r.ok("DELETE a/b")
r.ok("SUBSCRIBE gone")
# RFC 9051 section 6.3.9 (LIST-EXTENDED is the base LIST): a name that is
# only hierarchy is \NonExistent (which implies \Noselect, section 7.3.1),
# and so is a subscribed name that does not exist.
assert r.ok('LIST "" "a/%"') == ['* LIST (\\Noselect \\NonExistent \\HasChildren) "/" "a/b"']
assert r.ok('LIST (SUBSCRIBED) "" "gone"') == ['* LIST (\\NonExistent \\Subscribed) "/" "gone"']
"#,
    );
}

#[test]
fn rev2_keywords_are_ordinary_keywords() {
    run(
        "r2kw",
        r#"
r = rev2()
add(r, "one")
lines = r.ok("SELECT INBOX")
assert any(l.startswith("* OK [PERMANENTFLAGS (") and "\\*" in l for l in lines), lines
# RFC 9051 section 2.3.2: $Forwarded, $MDNSent, $Junk, $NotJunk and
# $Phishing are keywords like any other (announced in FLAGS first, the raw
# client checks that, and searchable).
kws = "$Forwarded $MDNSent $Junk $NotJunk $Phishing"
lines = r.ok("STORE 1 +FLAGS (%s)" % kws)
fetch = [l for l in lines if "FETCH" in l]
assert fetch and all(k in fetch[0] for k in kws.split()), lines
flags = [l for l in lines if l.startswith("* FLAGS")]
assert flags and all(k in flags[0] for k in kws.split()), lines
assert r.ok("SEARCH KEYWORD $Junk") == ['* ESEARCH (TAG "%s") ALL 1' % tag(r)]
assert r.ok("SEARCH UNKEYWORD $Phishing") == ['* ESEARCH (TAG "%s")' % tag(r)]
"#,
    );
}

#[test]
fn deprecated_commands_and_items_are_still_answered() {
    run(
        "r2old",
        r#"
r = rev2()
add(r, "one")
r.ok("SUBSCRIBE INBOX")
r.ok("SELECT INBOX")
# RFC 9051 drops CHECK, LSUB and the RFC822, RFC822.HEADER, RFC822.TEXT
# FETCH items from its grammar (Appendix E); a server that also speaks
# IMAP4rev1 still knows them, and answers them as it does there.
assert r.ok("CHECK") == []
lines = r.ok('LSUB "" "INBOX"')
assert lines == ['* LSUB (\\HasNoChildren) "/" "INBOX"'], lines
lines = r.ok("FETCH 1 (RFC822.HEADER)")
assert lines[0].startswith("* 1 FETCH (RFC822.HEADER {"), lines
assert "Subject: one" in lines[0], lines
"#,
    );
}

#[test]
fn message_global_is_a_message_in_bodystructure() {
    run(
        "r2global",
        r#"
msg = ("From: a@example.org\r\nSubject: outer\r\nMIME-Version: 1.0\r\n"
       "Content-Type: multipart/mixed; boundary=\"b\"\r\n\r\n"
       "--b\r\nContent-Type: text/plain\r\n\r\nhi\r\n"
       "--b\r\nContent-Type: message/global\r\n\r\n"
       "From: c@example.org\r\nSubject: inner\r\nContent-Type: text/plain; charset=utf-8\r\n\r\ngrüße\r\n"
       "--b--\r\n").encode()
r = rev2()
o = Raw("alice@example.org")
r.ok(b"APPEND INBOX {%d+}\r\n%s" % (len(msg), msg))
r.ok("SELECT INBOX")
o.ok("SELECT INBOX")
# RFC 9051 section 7.5.2: media-message is MESSAGE/RFC822 or MESSAGE/GLOBAL,
# with the envelope, body and line count of the message inside; its parts
# are numbered like those of message/rfc822 (section 6.4.5).
for item in ("BODYSTRUCTURE", "BODY"):
    lines = r.ok("FETCH 1 (%s)" % item)
    assert '"MESSAGE" "GLOBAL"' in lines[0].upper() and '"inner"' in lines[0], lines
lines = r.ok("FETCH 1 (BODY.PEEK[2.HEADER])")
assert "Subject: inner" in lines[0], lines
# Its text is searched as the text of a message.
assert r.ok('SEARCH BODY "grüße"'.encode()) == ['* ESEARCH (TAG "%s") ALL 1' % tag(r)]
# The same message to an IMAP4rev1 session, after the rev2 one read it:
# message/global is a leaf there (RFC 3501 knows only message/rfc822).
lines = o.ok("FETCH 1 (BODYSTRUCTURE)")
assert '"MESSAGE" "GLOBAL"' in lines[0].upper() and '"inner"' not in lines[0], lines
lines = o.ok("FETCH 1 (BODY.PEEK[2.HEADER])")
assert "Subject: inner" not in lines[0], lines
assert o.ok('SEARCH CHARSET UTF-8 BODY {7+}\r\ngr\xc3\xbc\xc3\x9fe'.encode("latin-1")) == ["* SEARCH"]
# And to another IMAP4rev2 session after that: each reads it its own way.
r2 = rev2()
r2.ok("EXAMINE INBOX")
lines = r2.ok("FETCH 1 (BODYSTRUCTURE)")
assert '"inner"' in lines[0], lines
"#,
    );
}

#[test]
fn hostile_rev2_commands_get_bad_and_the_session_goes_on() {
    run(
        "r2hostile",
        r#"
r = rev2()
add(r, "one")
r.ok("SELECT INBOX")
r.ok("SEARCH RETURN (SAVE) ALL")
for cmd in (b"SEARCH RETURN (SAVE",
            b"SEARCH RETURN (SAVE BOGUS) ALL",
            b"FETCH $$ (FLAGS)",
            b"FETCH $,1 (FLAGS)",
            b"UID EXPUNGE $:2",
            b"SEARCH HEADER $",
            b"SEARCH UID",
            b'STATUS "INBOX (SIZE)',
            b"STATUS INBOX (SIZE",
            b"STATUS INBOX SIZE",
            b"SEARCH MODSEQ \"/flags/x",
            b"SEARCH \xff $"):
    lines, status = r.cmd(cmd)
    assert status.startswith("BAD"), (cmd, status)
# The saved result and the session are still there.
assert r.ok("FETCH $ (UID)") == ["* 1 FETCH (UID 1)"]
assert r.ok("NOOP") == []
"#,
    );
}

/// Where `.ci/setup` installs imapflow (npm), a client that enables
/// IMAP4rev2 whenever a server offers it.
const IMAPFLOW: &str = "/opt/tandem-imapflow/node_modules";

#[test]
fn imapflow_works_in_an_imap4rev2_session() {
    let dir = tempfile::tempdir().unwrap();
    let node = node_with_users(dir.path(), "r2flow", "", &["alice@example.org"]);
    let (host, port) = node
        .addr("imap")
        .rsplit_once(':')
        .map(|(h, p)| (h.to_string(), p.to_string()))
        .unwrap();
    let script = r#"
const { ImapFlow } = require('imapflow');
const assert = require('assert');
(async () => {
  const c = new ImapFlow({ host: process.env.IMAP_HOST, port: +process.env.IMAP_PORT, secure: false, doSTARTTLS: false,
    auth: { user: 'alice@example.org', pass: 'secret' }, logger: false });
  await c.connect();
  // imapflow sends ENABLE IMAP4rev2 when offered (RFC 9051 Appendix A).
  assert(c.enabled.has('IMAP4REV2'), [...c.enabled].join(' '));
  await c.mailboxCreate('Entwürfe');
  const names = (await c.list()).map(m => m.path);
  assert(names.includes('Entwürfe'), names.join(','));
  for (const s of ['one', 'two', 'three']) {
    await c.append('INBOX', `From: a@example.org\r\nSubject: ${s}\r\n\r\nbody ${s}\r\n`, s === 'two' ? ['\\Seen'] : []);
  }
  const st = await c.status('INBOX', { messages: true, unseen: true, size: true });
  assert.strictEqual(st.messages, 3);
  assert.strictEqual(st.unseen, 2);
  assert(st.size > 0, JSON.stringify(st));
  const lock = await c.getMailboxLock('INBOX');
  try {
    // A plain SEARCH comes back as ESEARCH in a rev2 session.
    assert.deepStrictEqual(await c.search({ seen: false }), [1, 3]);
    assert.deepStrictEqual(await c.search({ seen: false }, { uid: true }), [1, 3]);
    await c.messageFlagsAdd({ uid: '3' }, ['$Junk']);
    const got = [];
    for await (const m of c.fetch('1:*', { uid: true, flags: true, envelope: true })) {
      got.push([m.uid, m.envelope.subject, [...m.flags].sort().join(' ')]);
    }
    assert.deepStrictEqual(got, [[1, 'one', ''], [2, 'two', '\\Seen'], [3, 'three', '$Junk']]);
    await c.messageMove('1', 'Entwürfe');
  } finally {
    lock.release();
  }
  const moved = await c.status('Entwürfe', { messages: true });
  assert.strictEqual(moved.messages, 1);
  await c.logout();
  console.log('imapflow ok');
})().catch(e => { console.error(e); process.exit(1); });
"#;
    let out = std::process::Command::new("node")
        .arg("-e")
        .arg(script)
        .env("NODE_PATH", IMAPFLOW)
        .env("IMAP_HOST", host)
        .env("IMAP_PORT", port)
        .output()
        .expect("node");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && text.contains("imapflow ok"), "imapflow failed:\n{text}");
}
