#!/usr/bin/env python3
"""The IMAP clients of footprint.sh (users user1..userN, password "pass").

  footprint_imap.py stored PORT USERS             sum of STATUS INBOX (MESSAGES SIZE)
  footprint_imap.py fetch PORT                    SELECT + FETCH 1:* (FLAGS ENVELOPE) of user1, timed
  footprint_imap.py logins PORT N USERS PID       N idle logged-in connections: RSS of PID per connection
  footprint_imap.py idle PORT N USERS PID         N clients in IDLE on INBOX: RSS of PID per connection

Each prints one JSON object. The two memory modes first log every user in
once (logins also SELECT INBOX once), so that the authentication cache and
the block cache are filled before the baseline: that memory is shared, not
the connections'. Stdlib only.
"""
import imaplib
import json
import re
import socket
import sys
import time


def rss(pid):
    for l in open("/proc/%s/status" % pid):
        if l.startswith("VmRSS"):
            return int(l.split()[1])


def connect(port):
    s = socket.create_connection(("127.0.0.1", port), timeout=60)
    until(s, b"* OK")
    return s


def until(s, start):
    """Read until a whole line starting with `start` arrives; all that was read."""
    buf = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            raise SystemExit("connection closed after %r" % buf[-200:])
        buf += chunk
        if any(l.startswith(start) for l in buf.split(b"\r\n")[:-1]):
            return buf


def stored(port, users):
    n = size = 0
    for u in range(1, users + 1):
        m = imaplib.IMAP4("127.0.0.1", port)
        m.login("user%d" % u, "pass")
        typ, d = m.status("INBOX", "(MESSAGES SIZE)")
        m.logout()
        s = d[0].decode()
        n += int(re.search(r"MESSAGES (\d+)", s).group(1))
        size += int(re.search(r"SIZE (\d+)", s).group(1))
    return {"messages": n, "bytes": size}


def fetch(port):
    m = imaplib.IMAP4("127.0.0.1", port)
    m.login("user1", "pass")
    t0 = time.time()
    typ, data = m.select("INBOX")
    n = int(data[0])
    t1 = time.time()
    typ, data = m.fetch("1:*", "(FLAGS ENVELOPE)")
    t2 = time.time()
    assert typ == "OK", typ
    fetched = sum(1 for x in data if isinstance(x, tuple) or isinstance(x, bytes) and b"ENVELOPE" in x)
    m.logout()
    return {"messages": n, "fetched": fetched, "select_ms": (t1 - t0) * 1e3, "fetch_ms": (t2 - t1) * 1e3}


def warm(port, users, select):
    for u in range(users):
        s = connect(port)
        cmds = b"a LOGIN user%d pass\r\n" % (u + 1)
        if select:
            cmds += b"b SELECT INBOX\r\n"
        s.sendall(cmds + b"c LOGOUT\r\n")
        until(s, b"c OK")
        s.close()
    time.sleep(2)


def hold(port, n, users, pid, select):
    """Open n connections (logged in; with select, in IDLE on INBOX),
    check that some still answer, and report the RSS they added."""
    warm(port, users, select)
    before = rss(pid)
    socks, exists = [], set()
    t0 = time.time()
    for i in range(n):
        s = connect(port)
        if select:
            s.sendall(b"a LOGIN user%d pass\r\nb SELECT INBOX\r\nc IDLE\r\n" % (i % users + 1))
            r = until(s, b"+ ")
            if b"a OK" not in r or b"b OK" not in r:
                raise SystemExit("connection %d: %r" % (i, r[-300:]))
            exists.update(int(l.split()[1]) for l in r.split(b"\r\n") if l.endswith(b" EXISTS"))
        else:
            s.sendall(b"a LOGIN user%d pass\r\n" % (i % users + 1))
            r = until(s, b"a ")
            if b"a OK" not in r:
                raise SystemExit("login %d failed: %r" % (i, r[-200:]))
        socks.append(s)
    t1 = time.time()
    time.sleep(5)
    with_conns = rss(pid)
    # They still answer: the first and last 100 (or all of them).
    for s in socks[:100] + socks[100:][-100:]:
        if select:
            s.sendall(b"DONE\r\n")
            if b"c OK" not in until(s, b"c "):
                raise SystemExit("IDLE did not end")
        else:
            s.sendall(b"n NOOP\r\n")
            until(s, b"n OK")
    for s in socks:
        s.close()
    time.sleep(3)
    res = {"connections": n, "seconds_to_open": t1 - t0, "rss_kb_before": before,
           "rss_kb_with_connections": with_conns, "rss_kb_after_close": rss(pid),
           "bytes_per_connection": (with_conns - before) * 1024 / max(n, 1)}
    if select:
        res["messages_in_inbox"] = sorted(exists)
    return res


def main():
    mode, port = sys.argv[1], int(sys.argv[2])
    if mode == "stored":
        res = stored(port, int(sys.argv[3]))
    elif mode == "fetch":
        res = fetch(port)
    elif mode in ("logins", "idle"):
        res = hold(port, int(sys.argv[3]), int(sys.argv[4]), sys.argv[5], mode == "idle")
    else:
        raise SystemExit(__doc__)
    print(json.dumps(res))


if __name__ == "__main__":
    main()
