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
