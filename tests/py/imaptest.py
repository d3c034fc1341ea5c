"""Helpers for Tandem's IMAP tests: real imaplib clients over loopback."""
import imaplib
import os
import socket
import time

HOST = os.environ.get("IMAP_HOST", "127.0.0.1")
PORT = int(os.environ.get("IMAP_PORT", "1143"))
LMTP_PORT = int(os.environ.get("LMTP_PORT", "2424"))


def connect(user=None, password="secret"):
    c = imaplib.IMAP4(HOST, PORT)
    if user:
        typ, _ = c.login(user, password)
        assert typ == "OK"
    return c


def ok(result, what=""):
    typ, data = result
    assert typ == "OK", "%s: %s %r" % (what, typ, data)
    return data


def lmtp_deliver(rcpt, body, sender="sender@example.net"):
    """Deliver one message over LMTP; returns the time the final 250 arrived."""
    s = socket.create_connection((HOST, LMTP_PORT))
    f = s.makefile("rb")

    def reply():
        lines = []
        while True:
            ln = f.readline().decode()
            lines.append(ln)
            if len(ln) < 4 or ln[3] != "-":
                return lines
    assert reply()[0].startswith("220")
    s.sendall(b"LHLO test\r\n")
    reply()
    wire = body.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    if not wire.endswith(b"\r\n"):
        wire += b"\r\n"
    s.sendall(b"MAIL FROM:<%s>\r\nRCPT TO:<%s>\r\nDATA\r\n" % (sender.encode(), rcpt.encode()))
    for want in ("250", "250", "354"):
        r = reply()
        assert r[0].startswith(want), r
    s.sendall(wire + b".\r\n")
    r = reply()
    t = time.monotonic()
    assert r[0].startswith("250"), r
    s.sendall(b"QUIT\r\n")
    s.close()
    return t


def message(subject, body="hello\r\n", frm="Alice <alice@example.org>", to="bob@example.org"):
    return ("From: %s\r\nTo: %s\r\nSubject: %s\r\nDate: Tue, 14 Nov 2023 22:13:20 +0000\r\n"
            "Message-ID: <%s@test>\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n%s"
            % (frm, to, subject, abs(hash(subject)), body)).encode()


# ---------------------------------------------------------------------------
# MIME corpus checks (tests/imap_mime_corpus.rs): APPEND real-world messages,
# then FETCH every section their BODYSTRUCTURE implies.

import re as _re


def wire_bytes(data):
    """What a client sends for a file's bytes: bare CR / LF become CRLF
    (exactly imaplib's APPEND conversion)."""
    return imaplib.MapCRLF.sub(imaplib.CRLF, data)


def _segments(data):
    """imaplib FETCH data -> [("t", text) | ("l", literal)]."""
    segs = []
    for item in data:
        if item is None:
            continue
        if isinstance(item, tuple):
            segs.append(("t", item[0]))
            segs.append(("l", item[1]))
        else:
            segs.append(("t", item))
    return segs


class ImapParseError(Exception):
    pass


class _Lexer:
    def __init__(self, segs):
        self.segs = segs
        self.i = 0      # segment index
        self.pos = 0    # position in the current text segment

    def _text(self):
        while self.i < len(self.segs):
            kind, val = self.segs[self.i]
            if kind == "t" and self.pos < len(val):
                return val
            if kind == "l":
                return None
            self.i += 1
            self.pos = 0
        return b""

    def skip_space(self):
        while True:
            t = self._text()
            if t is None or t == b"":
                return
            if t[self.pos:self.pos + 1] in (b" ", b"\r", b"\n"):
                self.pos += 1
            else:
                return

    def at_end(self):
        self.skip_space()
        return self._text() == b""

    def peek(self):
        self.skip_space()
        t = self._text()
        if t is None:
            return "LIT"
        return t[self.pos:self.pos + 1]

    def take(self, n=1):
        t = self._text()
        s = t[self.pos:self.pos + n]
        self.pos += n
        return s

    def literal(self):
        # A "{n}" ends the text segment and the literal follows.
        t = self._text()
        m = _re.match(rb"\{(\d+)\}$", t[self.pos:])
        if not m:
            raise ImapParseError("bad literal marker %r" % t[self.pos:self.pos + 40])
        self.pos = len(t)
        self.i += 1
        self.pos = 0
        if self.i >= len(self.segs) or self.segs[self.i][0] != "l":
            raise ImapParseError("literal marker without literal")
        val = self.segs[self.i][1]
        if len(val) != int(m.group(1)):
            raise ImapParseError("literal size %s but %d octets" % (m.group(1), len(val)))
        self.i += 1
        self.pos = 0
        return val

    def value(self):
        """One IMAP value: list, quoted string, literal, NIL, number or atom.
        Lists are Python lists, strings bytes, NIL None, atoms ("atom", bytes)."""
        c = self.peek()
        if c == b"":
            raise ImapParseError("unexpected end of response")
        if c == "LIT":
            raise ImapParseError("literal without marker")
        if c == b"(":
            self.take()
            out = []
            while True:
                c = self.peek()
                if c == b"":
                    raise ImapParseError("unbalanced parentheses: missing ')'")
                if c == b")":
                    self.take()
                    return out
                out.append(self.value())
        if c == b")":
            raise ImapParseError("unbalanced parentheses: unexpected ')'")
        if c == b'"':
            self.take()
            buf = bytearray()
            while True:
                ch = self.take()
                if ch == b"":
                    raise ImapParseError("unterminated quoted string")
                if ch == b"\\":
                    ch = self.take()
                    if ch not in (b"\\", b'"'):
                        raise ImapParseError("bad escape \\%r in quoted string" % ch)
                elif ch == b'"':
                    return bytes(buf)
                elif ch in (b"\r", b"\n"):
                    raise ImapParseError("line break in quoted string")
                buf += ch
        if c == b"{":
            return self.literal()
        return self.atom()

    def atom(self):
        """An atom, a number, NIL, or a fetch item name such as
        BODY[HEADER.FIELDS (SUBJECT)]<0>."""
        buf = bytearray()
        while True:
            t = self._text()
            if not t:
                break
            ch = t[self.pos:self.pos + 1]
            if ch == b"[":
                depth = 0
                while True:
                    ch = self.take()
                    if ch == b"":
                        raise ImapParseError("unterminated section %r" % bytes(buf))
                    buf += ch
                    if ch == b"[":
                        depth += 1
                    elif ch == b"]":
                        depth -= 1
                        if depth == 0:
                            break
                continue
            if ch in (b" ", b"(", b")", b"{", b'"', b"\r", b"\n", b"]"):
                break
            buf += self.take()
        if not buf:
            raise ImapParseError("expected a value at %r" % (self._text() or b"")[self.pos:self.pos + 40])
        b = bytes(buf)
        if b.upper() == b"NIL":
            return None
        if b.isdigit():
            return int(b)
        return ("atom", b)


def parse_fetch(data):
    """imaplib FETCH data -> [(seq, {ITEM-NAME: value})]. Raises ImapParseError
    on anything that is not well-formed (unbalanced parentheses, bad literal,
    odd number of items)."""
    lx = _Lexer(_segments(data))
    out = []
    while not lx.at_end():
        seq = lx.atom()
        if not isinstance(seq, int):
            raise ImapParseError("FETCH response does not start with a number: %r" % (seq,))
        if lx.peek() != b"(":
            raise ImapParseError("FETCH response without item list")
        items = lx.value()
        if len(items) % 2:
            raise ImapParseError("odd number of fetch items: %r" % items[:20])
        d = {}
        for k, v in zip(items[::2], items[1::2]):
            if not (isinstance(k, tuple) and k[0] == "atom"):
                raise ImapParseError("fetch item name is not an atom: %r" % (k,))
            d[_norm_item(k[1])] = v
        out.append((seq, d))
    return out


def _norm_item(name):
    name = name.decode("ascii", "replace").upper()
    return _re.sub(r"\s+", " ", name.replace("BODY.PEEK[", "BODY["))


def _is_multipart(bs):
    return isinstance(bs, list) and bs and isinstance(bs[0], list)


def _children(bs):
    out = []
    for x in bs:
        if not isinstance(x, list):
            break
        out.append(x)
    return out


def _lower(v):
    return v.lower() if isinstance(v, bytes) else v


def _is_rfc822(bs):
    return (isinstance(bs, list) and len(bs) >= 10 and _lower(bs[0]) == b"message"
            and _lower(bs[1]) == b"rfc822" and isinstance(bs[8], list))


def body_parts(bs, limit=400):
    """Every part number that a BODYSTRUCTURE implies (RFC 3501 6.4.5), as
    [(path_tuple, structure)]."""
    out = []

    def check(b, path):
        if not isinstance(b, list) or not b:
            raise ImapParseError("body at %s is not a non-empty list: %r" % (path, b))
        if _is_multipart(b):
            if len(_children(b)) == len(b) or not isinstance(b[len(_children(b))], bytes):
                raise ImapParseError("multipart at %s has no subtype string" % (path,))
        elif len(b) < 7 or not isinstance(b[0], bytes) or not isinstance(b[1], bytes) \
                or not isinstance(b[6], int):
            raise ImapParseError("body part at %s is malformed: %r" % (path, b[:8]))

    def message(b, path):
        check(b, path)
        if _is_multipart(b):
            for i, c in enumerate(_children(b), 1):
                entity(c, path + (i,))
        else:
            entity(b, path + (1,))

    def entity(b, path):
        check(b, path)
        if len(out) >= limit:
            return
        out.append((path, b))
        if _is_multipart(b):
            for i, c in enumerate(_children(b), 1):
                entity(c, path + (i,))
        elif _is_rfc822(b):
            message(b[8], path)

    message(bs, ())
    return out


FIXED_SECTIONS = ["1", "1.1", "2", "1.MIME", "HEADER", "TEXT", "HEADER.FIELDS (SUBJECT FROM)"]


def _fetch_sections(c, uid, sections):
    typ, data = c.uid("FETCH", str(uid), "(%s)" % " ".join("BODY.PEEK[%s]" % s for s in sections))
    if typ != "OK":
        return typ, data, None
    got = {}
    for _, d in parse_fetch(data):
        got.update(d)
    return typ, data, got


def append_message(c, raw, mailbox="INBOX"):
    """APPEND one file's bytes as a client sends them; returns (uid, problem)."""
    typ, data = c.append(mailbox, None, None, wire_bytes(raw))
    if typ != "OK":
        return None, "APPEND %s %r" % (typ, data)
    m = _re.search(rb"APPENDUID \d+ (\d+)", data[0] or b"")
    if not m:
        return None, "APPEND without APPENDUID: %r" % data
    return int(m.group(1)), None


def check_message(c, name, raw, uid):
    """Check every FETCH the issue lists for one appended file (c has its
    mailbox selected). Returns a list of problems (strings naming the file);
    empty when fine."""
    wire = wire_bytes(raw)
    probs = []

    def bad(msg):
        probs.append("%s: %s" % (name, msg))

    # Exact bytes and size.
    typ, data = c.uid("FETCH", str(uid), "(RFC822.SIZE BODY.PEEK[])")
    if typ != "OK":
        bad("FETCH BODY[] %s %r" % (typ, data))
        return probs
    try:
        d = dict(parse_fetch(data))
        d = next(iter(d.values()))
    except (ImapParseError, StopIteration) as e:
        bad("FETCH BODY[] response does not parse (%s): %r" % (e, data[:3]))
        return probs
    body = d.get("BODY[]")
    if body != wire:
        n = next((i for i in range(min(len(body or b""), len(wire))) if body[i] != wire[i]),
                 min(len(body or b""), len(wire)))
        bad("BODY[] differs from the appended bytes (%s vs %d octets, first difference at %d: %r vs %r)"
            % (None if body is None else len(body), len(wire), n,
               (body or b"")[max(0, n - 20):n + 20], wire[max(0, n - 20):n + 20]))
    if d.get("RFC822.SIZE") != len(wire):
        bad("RFC822.SIZE %r, appended %d octets" % (d.get("RFC822.SIZE"), len(wire)))

    # ENVELOPE, BODYSTRUCTURE, BODY.
    typ, data = c.uid("FETCH", str(uid), "(ENVELOPE BODYSTRUCTURE BODY)")
    if typ != "OK":
        bad("FETCH (ENVELOPE BODYSTRUCTURE BODY) %s %r" % (typ, data))
        return probs
    try:
        d = next(iter(dict(parse_fetch(data)).values()))
    except (ImapParseError, StopIteration) as e:
        bad("FETCH (ENVELOPE BODYSTRUCTURE BODY) does not parse (%s): %r" % (e, data))
        return probs
    env, bs = d.get("ENVELOPE"), d.get("BODYSTRUCTURE")
    if not isinstance(env, list) or len(env) != 10:
        bad("ENVELOPE is not a 10-item list: %r" % (env,))
    else:
        for i in range(2, 8):
            a = env[i]
            if a is not None and not (isinstance(a, list) and all(isinstance(x, list) and len(x) == 4 for x in a)):
                bad("ENVELOPE address list %d is malformed: %r" % (i, a))
    if not isinstance(d.get("BODY"), list):
        bad("BODY missing: %r" % (d,))
    try:
        parts = body_parts(bs)
    except ImapParseError as e:
        bad("BODYSTRUCTURE malformed (%s): %r" % (e, bs))
        return probs

    # Every implied section plus the fixed list, in one FETCH; on failure,
    # one FETCH per section to name the one that fails.
    sections = list(FIXED_SECTIONS)
    for path, b in parts:
        p = ".".join(map(str, path))
        sections += [p, p + ".MIME"]
        if _is_rfc822(b):
            sections += [p + ".HEADER", p + ".TEXT", p + ".HEADER.FIELDS (SUBJECT)"]
    sections = list(dict.fromkeys(sections))
    try:
        typ, data, got = _fetch_sections(c, uid, sections)
    except ImapParseError as e:
        typ, data, got = "UNPARSABLE", [str(e)], None
    if got is None:
        for s in sections:
            try:
                t, dt, _ = _fetch_sections(c, uid, [s])
            except ImapParseError as e:
                t, dt = "UNPARSABLE", [str(e)]
            if t != "OK":
                bad("FETCH BODY.PEEK[%s] %s %r" % (s, t, dt))
        if not probs:
            bad("FETCH of all sections together %s %r" % (typ, data))
        return probs
    for s in sections:
        if _norm_item(("BODY[%s]" % s).encode()) not in got:
            bad("FETCH BODY.PEEK[%s] answered without BODY[%s]: %r" % (s, s, sorted(got)))
    if probs:
        return probs

    def sec(s):
        v = got[_norm_item(("BODY[%s]" % s).encode())]
        return v if v is not None else b""

    # Invariants of RFC 3501 that hold for any message.
    if sec("HEADER") + sec("TEXT") != wire:
        bad("BODY[HEADER] + BODY[TEXT] != BODY[] (%d + %d vs %d octets)"
            % (len(sec("HEADER")), len(sec("TEXT")), len(wire)))
    if not _is_multipart(bs) and sec("1") != sec("TEXT"):
        bad("non-multipart message: BODY[1] (%d octets) != BODY[TEXT] (%d octets)"
            % (len(sec("1")), len(sec("TEXT"))))
    for path, b in parts:
        p = ".".join(map(str, path))
        whole = sec(p + ".MIME") + sec(p)
        if len(path) > 1 or _is_multipart(bs):
            if whole not in wire:
                bad("BODY[%s.MIME] + BODY[%s] is not a slice of the message" % (p, p))
        if not _is_multipart(b) and b[6] != len(sec(p)):
            bad("BODYSTRUCTURE size of part %s is %d but BODY[%s] has %d octets"
                % (p, b[6], p, len(sec(p))))
        if _is_rfc822(b) and sec(p + ".HEADER") + sec(p + ".TEXT") != sec(p):
            bad("BODY[%s.HEADER] + BODY[%s.TEXT] != BODY[%s]" % (p, p, p))
    return probs


def check_mime_corpus(user, files, mailbox="INBOX", max_seconds=120, connections=4):
    """APPEND every file (paths; over `connections` connections at once, so
    durable appends share group commits), then check_message each one.
    Raises SystemExit naming every failing file. Bounded by max_seconds."""
    import threading
    t0 = time.monotonic()
    raws = []
    for path in files:
        with open(path, "rb") as f:
            raws.append(f.read())
    uids = [None] * len(files)
    problems = []
    lock = threading.Lock()

    def appender(k):
        try:
            c = connect(user)
            c.sock.settimeout(60)
            for i in range(k, len(files), connections):
                if time.monotonic() - t0 > max_seconds:
                    with lock:
                        problems.append("gave up appending after %ds" % max_seconds)
                    break
                uid, err = append_message(c, raws[i], mailbox)
                uids[i] = uid
                if err:
                    with lock:
                        problems.append("%s: %s" % (os.path.basename(files[i]), err))
            c.logout()
        except Exception as e:  # reported below with the file names
            with lock:
                problems.append("appender %d: %r" % (k, e))

    threads = [threading.Thread(target=appender, args=(k,)) for k in range(connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    t1 = time.monotonic()
    c = connect(user)
    c.sock.settimeout(60)
    ok(c.select(mailbox), "select")
    for path, raw, uid in zip(files, raws, uids):
        if uid is None:
            continue
        if time.monotonic() - t0 > max_seconds:
            problems.append("gave up after %ds at %s" % (max_seconds, path))
            break
        try:
            problems += check_message(c, os.path.basename(path), raw, uid)
        except (imaplib.IMAP4.abort, OSError) as e:
            problems.append("%s: connection lost: %s" % (os.path.basename(path), e))
            c = connect(user)
            c.sock.settimeout(60)
            ok(c.select(mailbox), "select")
    c.logout()
    print("checked %d messages: appended in %.1fs, fetched in %.1fs, %d problems"
          % (len(files), t1 - t0, time.monotonic() - t1, len(problems)))
    if problems:
        raise SystemExit("%d problems:\n%s" % (len(problems), "\n".join(problems)))
