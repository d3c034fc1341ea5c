"""A raw IMAP client for compliance tests: sends exact command bytes, returns
every untagged line, and checks the keyword rule of RFC 3501 section 7.2.6
as it goes: a keyword shown in a FETCH FLAGS must have been announced in an
untagged FLAGS response of this session first."""
import re
import socket

from imaptest import HOST, PORT

SYSTEM = {"\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft", "\\Recent"}


class Raw:
    def __init__(self, user=None, password="secret"):
        self.s = socket.create_connection((HOST, PORT), timeout=20)
        self.f = self.s.makefile("rb")
        self.n = 0
        self.announced = None  # keywords of the last FLAGS, once a mailbox is selected
        self.permanent = None
        greeting = self.f.readline()
        assert greeting.startswith(b"* OK"), greeting
        if user:
            self.ok("LOGIN %s %s" % (user, password))

    def _line(self):
        raw = self.f.readline()
        if not raw:
            raise SystemExit("connection closed by the server")
        line = raw.rstrip(b"\r\n")
        m = re.search(rb"\{(\d+)\+?\}$", line)
        if m:  # a literal follows: keep it inline
            data = self.f.read(int(m.group(1)))
            rest = self.f.readline().rstrip(b"\r\n")
            line = line + b"\r\n" + data + rest
        return line.decode("utf-8", "replace")

    def _check(self, line):
        m = re.match(r"\* FLAGS \(([^)]*)\)", line)
        if m:
            self.announced = set(m.group(1).split()) - SYSTEM
            return
        m = re.match(r"\* OK \[PERMANENTFLAGS \(([^)]*)\)\]", line)
        if m:
            self.permanent = set(m.group(1).split())
            return
        m = re.match(r"\* \d+ FETCH \(.*FLAGS \(([^)]*)\)", line)
        if m:
            used = set(m.group(1).split()) - SYSTEM
            assert self.announced is not None and used <= self.announced, \
                "FETCH shows keywords never announced in FLAGS: %s (announced %s): %s" % (
                    sorted(used - (self.announced or set())), sorted(self.announced or []), line)
            assert self.permanent is None or "\\*" in self.permanent or used <= self.permanent, line

    def cmd(self, text):
        """Send one command (str or bytes, without tag); returns (untagged lines, tagged line)."""
        self.n += 1
        tag = "t%d" % self.n
        data = text.encode() if isinstance(text, str) else text
        self.s.sendall(tag.encode() + b" " + data + b"\r\n")
        lines = []
        while True:
            line = self._line()
            if line.startswith(tag + " "):
                return lines, line[len(tag) + 1:]
            if not line.startswith("+"):
                self._check(line)
                lines.append(line)

    def ok(self, text):
        lines, status = self.cmd(text)
        assert status.startswith("OK"), "%s -> %s %s" % (text, status, lines)
        return lines

    def search(self, criteria):
        lines = self.ok("SEARCH " + criteria if isinstance(criteria, str) else b"SEARCH " + criteria)
        hits = [l for l in lines if l.startswith("* SEARCH")]
        assert len(hits) == 1, lines
        return [int(x) for x in hits[0].split()[2:]]
