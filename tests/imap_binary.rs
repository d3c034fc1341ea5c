//! The IMAP BINARY extension (RFC 3516) through real clients over a real
//! socket: Python's imaplib for FETCH (it reads `~{n}` literal8 responses
//! as literals) and a raw byte client for APPEND with a literal8, against
//! the real daemon.

mod common;
use common::{node_with_users, python};

/// A message with a quoted-printable text part, a base64 attachment whose
/// decoded bytes hold NULs, and a part in a transfer encoding nobody knows.
/// The script checks every RFC 3516 FETCH form against the decoded bytes
/// (the attachment as Python's base64 module encodes it, the text as
/// written).
#[test]
fn fetch_binary_decodes_parts_and_append_takes_a_literal8() {
    let dir = tempfile::tempdir().unwrap();
    let node = node_with_users(dir.path(), "binary", "", &["alice@example.org"]);
    python(
        &node,
        r#"
import base64, imaplib, re, socket
from imaptest import *

attachment = bytes(range(256)) + b"\x00\x00tail\x00"
# Quoted-printable with a soft line break; the line break before the
# delimiter belongs to the delimiter (RFC 2046), so the part ends with "AC".
qp = b"Gr=C3=BC=C3=9Fe, na=C3=AFve caf=C3=A9 =3D 100%\r\nzweite Zeile mit weichem Um=\r\nbruch und =E2=82=AC"
decoded_text = "Grüße, naïve café = 100%\r\nzweite Zeile mit weichem Umbruch und €".encode()
b64 = base64.encodebytes(attachment).replace(b"\n", b"\r\n")
assert base64.b64decode(b64) == attachment
msg = (b"From: a@example.org\r\nTo: b@example.org\r\nSubject: binary\r\nMIME-Version: 1.0\r\n"
       b"Content-Type: multipart/mixed; boundary=\"zz\"\r\n\r\n"
       b"--zz\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
       + qp +
       b"\r\n--zz\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n"
       + b64 +
       b"\r\n--zz\r\nContent-Type: application/x-odd\r\nContent-Transfer-Encoding: x-unknown\r\n\r\nq~q~q\r\n"
       b"--zz--\r\n")

c = connect("alice@example.org")
assert "BINARY" in c.capabilities, c.capabilities
for _ in range(2):
    ok(c.append("INBOX", None, None, msg), "append")
ok(c.select("INBOX"))

def fetch(which, items):
    typ, data = c.fetch(which, items)
    assert typ == "OK", (items, typ, data)
    return data

def flags(n):
    d = fetch(n, "(FLAGS)")
    return d[0].decode()

def literal(data):
    """(response prefix, literal bytes) of a FETCH with one literal item."""
    assert isinstance(data[0], tuple), data
    return data[0][0].decode(), data[0][1]

# BINARY.PEEK[2]: the attachment's bytes, NULs included, as a literal8.
head, got = literal(fetch("1", "(BINARY.PEEK[2])"))
assert got == attachment, (len(got), got[:40])
assert head.endswith("BINARY[2] ~{%d}" % len(attachment)), head
# BINARY.SIZE[2]: the length of those bytes.
d = fetch("1", "(BINARY.SIZE[2] BINARY.SIZE[1])")
m = re.search(r"BINARY\.SIZE\[2\] (\d+)", d[0].decode())
assert m and int(m.group(1)) == len(attachment), d
m = re.search(r"BINARY\.SIZE\[1\] (\d+)", d[0].decode())
assert m and int(m.group(1)) == len(decoded_text), (d, len(decoded_text))
# One item without parentheses.
d = fetch("1", "BINARY.SIZE[2]")
assert d == [b"1 (BINARY.SIZE[2] %d)" % len(attachment)], d
# PEEK leaves \Seen unset.
assert "\\Seen" not in flags("1"), flags("1")

# BINARY[1]: the text part decoded from quoted-printable; no NUL, so a
# plain literal.
head, got = literal(fetch("1", "(BINARY.PEEK[1])"))
assert got == decoded_text, (got, decoded_text)
assert "~{" not in head and head.endswith("{%d}" % len(decoded_text)), head
assert "\\Seen" not in flags("1"), flags("1")

# BINARY[1]<0.10>: a partial range of the decoded data, and it sets \Seen.
head, got = literal(fetch("1", "(BINARY[1]<0.10>)"))
assert got == decoded_text[:10], got
assert "BINARY[1]<0> {10}" in head, head
assert "\\Seen" in flags("1"), flags("1")
head, got = literal(fetch("1", "(BINARY.PEEK[2]<250.100>)"))
assert got == attachment[250:], got
assert "BINARY[2]<250> ~{%d}" % len(attachment[250:]) in head, head

# BINARY among other items, by UID.
typ, data = c.uid("FETCH", "1", "(FLAGS BINARY.PEEK[2] BODY.PEEK[2] BINARY.SIZE[2])")
assert typ == "OK", data
joined = b"".join(x if isinstance(x, bytes) else x[0] + x[1] for x in data)
assert attachment in joined and b64 in joined and b"UID 1" in joined, joined[:200]
assert b"BINARY.SIZE[2] %d" % len(attachment) in joined, joined

# A part in an unknown transfer encoding: NO [UNKNOWN-CTE], for the whole
# FETCH, and the message stays unseen.
assert "\\Seen" not in flags("2")
typ, data = c.fetch("2", "(FLAGS BINARY[3])")
assert typ == "NO" and b"[UNKNOWN-CTE]" in data[0], (typ, data)
assert "\\Seen" not in flags("2"), flags("2")
typ, data = c.fetch("2", "(BINARY.SIZE[3])")
assert typ == "NO" and b"[UNKNOWN-CTE]" in data[0], (typ, data)
# BODY[3] is still there, encoded as stored.
d = fetch("2", "(BODY.PEEK[3])")
assert d[0][1] == b"q~q~q", d

# Sections are part numbers only: HEADER, TEXT and MIME are BAD.
for bad in ("(BINARY[HEADER])", "(BINARY[1.MIME])", "(BINARY[TEXT])", "(BINARY[1]<0.0>)", "(BINARY.SIZE[1]<0.5>)"):
    try:
        typ, data = c.fetch("1", bad)
    except imaplib.IMAP4.error as e:
        # The refusal names where the item went wrong.
        assert "BAD" in str(e) and "at octet" in str(e), e
    else:
        raise AssertionError("%s answered %s %r" % (bad, typ, data))

# A part that does not exist is NIL, and its size 0.
d = fetch("1", "(BINARY.PEEK[7] BINARY.SIZE[7])")
assert "BINARY[7] NIL" in d[0].decode() and "BINARY.SIZE[7] 0" in d[0].decode(), d

# APPEND with a literal8 (synchronising, then LITERAL+): the octets are
# stored as given, NULs and bare CR included, and read back byte for byte.
raw = (b"From: a@example.org\r\nSubject: raw\r\nContent-Type: application/octet-stream\r\n"
       b"Content-Transfer-Encoding: binary\r\n\r\n" + bytes(range(256)) + b"\r\x00\n end")
s = socket.create_connection((HOST, PORT), timeout=20)
f = s.makefile("rb")
assert f.readline().startswith(b"* OK")
def tagged(tag):
    while True:
        line = f.readline()
        assert line, "connection closed"
        m = re.search(rb"\{(\d+)\+?\}\r\n$", line)
        if m:
            f.read(int(m.group(1)))
            continue
        if line.startswith(tag + b" "):
            return line
s.sendall(b"a LOGIN alice@example.org secret\r\n")
assert tagged(b"a").startswith(b"a OK"), "login"
s.sendall(b"b APPEND INBOX (\\Seen) ~{%d}\r\n" % len(raw))
assert f.readline().startswith(b"+"), "continuation"
s.sendall(raw + b"\r\n")
line = tagged(b"b")
assert line.startswith(b"b OK [APPENDUID "), line
s.sendall(b"c APPEND INBOX ~{%d+}\r\n" % len(raw) + raw + b"\r\n")
line = tagged(b"c")
assert line.startswith(b"c OK [APPENDUID "), line
s.sendall(b"d LOGOUT\r\n")
s.close()

ok(c.noop())
for n in ("3", "4"):
    d = fetch(n, "(BODY.PEEK[])")
    assert d[0][1] == raw, (n, d[0][1][-40:])
    # BINARY[1] of a single-part message is its body, the binary
    # encoding left as it is.
    head, got = literal(fetch(n, "(BINARY.PEEK[1])"))
    assert got == raw.split(b"\r\n\r\n", 1)[1], got[-40:]
    assert "~{" in head, head
c.logout()
print("binary ok")
"#,
    );
    assert!(node.stop());
}
