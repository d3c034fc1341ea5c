#!/usr/bin/env python3
"""IMAP load generator, usable against any IMAP4rev1 server.

  imap_load.py --port 10143 --mode mixed --clients 10 --seconds 20 --json out.json
  imap_load.py --port 10143 --mode login --clients 10 --seconds 20

Client i logs in as user(i mod nusers)+1 (--users 'user%d', --password).

mode mixed: each client logs in once and stays logged in; one cycle is
  LIST "" "*", STATUS INBOX (MESSAGES UIDNEXT UNSEEN), SELECT INBOX,
  FETCH 1:<n> (FLAGS ENVELOPE) of the first --fetch messages, APPEND of a
  small message, UID STORE of it +FLAGS (\\Deleted), EXPUNGE: 7 commands,
  the mailbox size unchanged after each cycle. The rate is commands/s.
mode login: each cycle connects, LOGIN, LOGOUT, closes. The rate is
  logins/s (a cycle counts only when LOGIN answered OK).

Every command must answer OK (a NO/BAD fails the run). Prints one line and,
with --json, writes {mode, clients, seconds, ops, rate, latency_ms{p50,p99}}.
"""
import argparse
import asyncio
import json
import re
import sys
import time

ap = argparse.ArgumentParser()
ap.add_argument("--host", default="127.0.0.1")
ap.add_argument("--port", type=int, required=True)
ap.add_argument("--mode", choices=["mixed", "login"], default="mixed")
ap.add_argument("--clients", type=int, default=10)
ap.add_argument("--seconds", type=float, default=10)
ap.add_argument("--users", default="user%d")
ap.add_argument("--nusers", type=int, default=10)
ap.add_argument("--password", default="pass")
ap.add_argument("--fetch", type=int, default=20)
ap.add_argument("--label", default="")
ap.add_argument("--json")
args = ap.parse_args()

MSG = (b"From: load@example.org\r\nTo: user@example.org\r\nSubject: imap load\r\n"
       b"Date: Wed, 02 Dec 2026 03:00:00 +0000\r\nMessage-ID: <load@example.org>\r\n\r\n" + b"hello\r\n" * 40)
APPENDUID = re.compile(rb"\[APPENDUID \d+ (\d+)\]")


class Fail(Exception):
    pass


class Conn:
    def __init__(self, r, w):
        self.r, self.w, self.n = r, w, 0

    @classmethod
    async def open(cls):
        r, w = await asyncio.open_connection(args.host, args.port, limit=1 << 24)
        c = cls(r, w)
        greet = await r.readline()
        if not greet.startswith(b"* OK"):
            raise Fail("greeting %r" % greet)
        return c

    async def cmd(self, text, literal=None):
        """Send a command; return (untagged lines, tagged line). Literals in
        responses are read whole."""
        self.n += 1
        tag = b"c%d" % self.n
        if literal is None:
            self.w.write(tag + b" " + text + b"\r\n")
        else:
            self.w.write(tag + b" " + text + b" {%d}\r\n" % len(literal))
            await self.w.drain()
            cont = await self.r.readline()
            if not cont.startswith(b"+"):
                raise Fail("%s: no continuation: %r" % (text[:30], cont))
            self.w.write(literal + b"\r\n")
        await self.w.drain()
        lines = []
        while True:
            line = await self.r.readline()
            if not line:
                raise Fail("%s: connection closed" % text[:30])
            m = re.search(rb"\{(\d+)\}\r\n$", line)
            if m:
                line += await self.r.readexactly(int(m.group(1)))
                line += await self.r.readline()
            if line.startswith(tag + b" "):
                if not line[len(tag) + 1:].startswith(b"OK"):
                    raise Fail("%s: %r" % (text[:40], line[:200]))
                return lines, line
            lines.append(line)

    def close(self):
        self.w.close()


BY_CMD = {}


def note(text, t):
    BY_CMD.setdefault(text.split(b" ")[0].decode(), []).append(time.monotonic() - t)


async def mixed(i, deadline, lat, counts):
    c = await Conn.open()
    user = (args.users % (i % args.nusers + 1)).encode()
    await c.cmd(b"LOGIN " + user + b" " + args.password.encode())
    while time.monotonic() < deadline:
        for text, lit in [
            (b'LIST "" "*"', None),
            (b"STATUS INBOX (MESSAGES UIDNEXT UNSEEN)", None),
            (b"SELECT INBOX", None),
            (b"FETCH 1:%d (FLAGS ENVELOPE)" % args.fetch, None),
            (b"APPEND INBOX", MSG),
        ]:
            t = time.monotonic()
            untagged, tagged = await c.cmd(text, lit)
            note(text, t)
            lat.append(time.monotonic() - t)
            counts[0] += 1
        m = APPENDUID.search(tagged)
        if not m:
            raise Fail("APPEND without APPENDUID: %r" % tagged)
        for text in [b"UID STORE %s +FLAGS.SILENT (\\Deleted)" % m.group(1), b"EXPUNGE"]:
            t = time.monotonic()
            await c.cmd(text)
            note(text, t)
            lat.append(time.monotonic() - t)
            counts[0] += 1
    await c.cmd(b"LOGOUT")
    c.close()


async def login(i, deadline, lat, counts):
    user = (args.users % (i % args.nusers + 1)).encode()
    while time.monotonic() < deadline:
        t = time.monotonic()
        c = await Conn.open()
        await c.cmd(b"LOGIN " + user + b" " + args.password.encode())
        lat.append(time.monotonic() - t)
        counts[0] += 1
        await c.cmd(b"LOGOUT")
        c.close()


async def main():
    lat, counts = [], [0]
    f = mixed if args.mode == "mixed" else login
    t0 = time.monotonic()
    deadline = t0 + args.seconds
    await asyncio.gather(*(f(i, deadline, lat, counts) for i in range(args.clients)))
    el = time.monotonic() - t0
    lat.sort()
    q = lambda p: lat[min(len(lat) - 1, int(p / 100 * len(lat)))] * 1000 if lat else float("nan")
    res = {"label": args.label, "mode": args.mode, "clients": args.clients, "seconds": el, "ops": counts[0],
           "rate": counts[0] / el, "latency_ms": {"p50": q(50), "p99": q(99)},
           "median_ms_by_command": {k: sorted(v)[len(v) // 2] * 1000 for k, v in sorted(BY_CMD.items())}}
    unit = "commands/s" if args.mode == "mixed" else "logins/s"
    print("%s %s: %d clients, %d ops in %.1f s: %.1f %s, p50 %.2f ms, p99 %.2f ms"
          % (args.label, args.mode, args.clients, counts[0], el, res["rate"], unit, res["latency_ms"]["p50"], res["latency_ms"]["p99"]))
    if BY_CMD:
        print("  median ms by command: " + ", ".join("%s %.1f" % kv for kv in res["median_ms_by_command"].items()))
    if args.json:
        json.dump(res, open(args.json, "w"))


try:
    asyncio.run(main())
except Fail as e:
    sys.exit("imap_load: %s" % e)
