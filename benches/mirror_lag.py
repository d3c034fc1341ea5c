#!/usr/bin/env python3
"""Mirror benchmarks on loopback with two real nodes (see mirror_lag.sh).

(a) replication lag: deliveries on A at a fixed rate over CONNS LMTP
    connections (default 1 up to 800 msg/s, else one per 250 msg/s); an IMAP IDLE session on B
    timestamps each EXISTS (B sends it after the entry is durable on B).
    lag = EXISTS on B - 250 on A, per message: p50 / p99.
(d) catch-up: B stopped, 100 deliveries on A, B started; time from B's mirror
    link reporting "connected" until B's version vector equals A's.
"""
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time

A_LMTP, B_IMAP = int(os.environ["A_LMTP"]), int(os.environ["B_IMAP"])
RATE, COUNT = float(os.environ.get("RATE", "500")), int(os.environ.get("COUNT", "2500"))
# LMTP connections delivering: one durable delivery at a time each, so one
# connection offers 900-1,500 msg/s at most here. By default one up to
# 800 msg/s, else one per 250 msg/s offered (2,000 msg/s: 8 connections
# achieved 1,980, 3 achieved 1,425).
CONNS = int(os.environ.get("CONNS", "0")) or (1 if RATE <= 800 else -(-int(RATE) // 250))


def lmtp_conn():
    s = socket.create_connection(("127.0.0.1", A_LMTP))
    f = s.makefile("rb")
    f.readline()
    s.sendall(b"LHLO bench\r\n")
    while f.readline()[3:4] == b"-":
        pass
    return s, f


def deliver(s, f, i):
    s.sendall(b"MAIL FROM:<b@x>\r\nRCPT TO:<u@example.org>\r\nDATA\r\nSubject: lag %d\r\n\r\n%s\r\n.\r\n" % (i, b"x" * 2000))
    for _ in range(4):
        r = f.readline()
    assert r.startswith(b"250"), r
    return time.monotonic()


def lag():
    exists = {}
    ready = threading.Event()
    def idle():
        s = socket.create_connection(("127.0.0.1", B_IMAP))
        f = s.makefile("rb")
        f.readline()
        s.sendall(b"a LOGIN u@example.org secret\r\nb SELECT INBOX\r\n")
        base = None
        while True:
            l = f.readline()
            if l.endswith(b"EXISTS\r\n") and base is None:
                base = int(l.split()[1])
            if l.startswith(b"b OK"):
                break
        s.sendall(b"c IDLE\r\n")
        f.readline()
        ready.set()
        while len(exists) < COUNT:
            l = f.readline()
            if not l:
                break
            if l.endswith(b"EXISTS\r\n"):
                n = int(l.split()[1]) - base
                t = time.monotonic()
                for k in range(len(exists), n):
                    exists.setdefault(k, t)
        s.close()
    th = threading.Thread(target=idle, daemon=True)
    th.start()
    ready.wait(10)
    acked = [None] * COUNT
    t0 = time.monotonic()

    def sender(k):
        s, f = lmtp_conn()
        for i in range(k, COUNT, CONNS):
            due = t0 + i / RATE
            now = time.monotonic()
            if due > now:
                time.sleep(due - now)
            acked[i] = deliver(s, f, i)
        s.close()

    senders = [threading.Thread(target=sender, args=(k,)) for k in range(CONNS)]
    for t in senders:
        t.start()
    for t in senders:
        t.join()
    th.join(30)
    # B announces messages in A's log order; with several connections the
    # k-th message in that order is taken to be the k-th acknowledged (acks
    # of one group commit come together, so the error is within a group).
    acked.sort()
    lags = sorted((exists[i] - acked[i]) * 1000 for i in range(COUNT) if i in exists)
    assert len(lags) == COUNT, "B saw %d of %d" % (len(lags), COUNT)
    q = lambda p: lags[min(len(lags) - 1, int(p / 100 * len(lags)))]
    el = time.monotonic() - t0
    print("(a) lag 250 on A -> durable and announced on B, %d msgs at %.0f msg/s on %d LMTP connections (achieved %.0f): p50 %.2f ms, p99 %.2f ms, max %.2f ms"
          % (COUNT, RATE, CONNS, COUNT / el, q(50), q(99), lags[-1]))
    if os.environ.get("RESULTS"):
        with open(os.environ["RESULTS"], "a") as f:
            f.write(json.dumps({"lag": {"rate": RATE, "conns": CONNS, "achieved": COUNT / el, "p50": q(50), "p99": q(99), "max": lags[-1]}}) + "\n")


if __name__ == "__main__":
    lag()
