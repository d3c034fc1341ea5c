#!/usr/bin/env python3
"""Continuous-backup lag under a paced LMTP load (driven by backup_lag.sh).

Delivers RATE messages/s for SECONDS over CONNS LMTP connections (message i
is due at t0 + i/RATE; a connection that falls behind sends at once), while
a poller reads the node's /v1/status every POLL_MS and keeps the apply order
and the backup's durable position. The lag of entry k is the time from the
first poll that saw the node's apply order reach k to the first poll that
saw the backup position reach k (resolution: one poll interval). Prints the
achieved rate, the lag's p50/p99/max and the backup's object writes per
second, and writes the same as JSON.

    backup_lag.py --data DATA_DIR --rate 500 --seconds 20 --json out.json
"""
import argparse, json, socket, statistics, threading, time, urllib.request


def addr(v):
    v = v.split("://", 1)[-1].rstrip("/")
    host, port = v.rsplit(":", 1)
    return host, int(port)


def status(admin, token):
    req = urllib.request.Request(f"http://{admin[0]}:{admin[1]}/v1/status", headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=5) as r:
        return json.load(r)


class Lmtp:
    def __init__(self, lmtp):
        self.s = socket.create_connection(lmtp, timeout=30)
        self.f = self.s.makefile("rb")
        self.reply()
        self.cmd(b"LHLO bench.example")

    def reply(self):
        while True:
            line = self.f.readline()
            if not line:
                raise RuntimeError("LMTP connection closed")
            if line[3:4] != b"-":
                return line

    def cmd(self, c):
        self.s.sendall(c + b"\r\n")
        r = self.reply()
        if r[:1] not in (b"2", b"3"):
            raise RuntimeError(f"{c!r}: {r!r}")
        return r

    def deliver(self, rcpt, body):
        self.cmd(b"MAIL FROM:<bench@example.net>")
        self.cmd(b"RCPT TO:<" + rcpt.encode() + b">")
        self.cmd(b"DATA")
        self.s.sendall(body + b"\r\n.\r\n")
        r = self.reply()
        if r[:1] != b"2":
            raise RuntimeError(f"DATA: {r!r}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True, help="the node's data dir (listen.json, admin.token)")
    ap.add_argument("--rate", type=float, default=500)
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--conns", type=int, default=8)
    ap.add_argument("--users", type=int, default=10)
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--poll-ms", type=float, default=20)
    ap.add_argument("--drain-seconds", type=float, default=60)
    ap.add_argument("--json")
    a = ap.parse_args()
    listen = json.load(open(f"{a.data}/listen.json"))
    lmtp, admin = addr(listen["lmtp"]), addr(listen["admin"])
    token = open(f"{a.data}/admin.token").read().strip()

    samples = []  # (t, apply_order, position)
    stop = threading.Event()

    def poll():
        while not stop.is_set():
            t = time.monotonic()
            b = status(admin, token)["backup"][0]
            samples.append((time.monotonic(), b["apply_order"], b["position"]))
            time.sleep(max(0.0, a.poll_ms / 1000 - (time.monotonic() - t)))

    first = status(admin, token)["backup"][0]
    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    total = int(a.rate * a.seconds)
    pad = b"".join(b"line %d of the bench body\r\n" % i for i in range(a.size // 26 + 1))[: a.size]
    t0 = time.monotonic() + 0.2
    errors = []

    def sender(j):
        try:
            c = Lmtp(lmtp)
            for i in range(j, total, a.conns):
                due = t0 + i / a.rate
                d = due - time.monotonic()
                if d > 0:
                    time.sleep(d)
                body = b"From: bench@example.net\r\nSubject: backup lag %d\r\nMessage-ID: <%d.%f@bench>\r\n\r\n" % (i, i, t0) + pad
                c.deliver(f"user{i % a.users + 1}@localhost", body)
        except Exception as e:  # reported below, fails the run
            errors.append(f"connection {j}: {e}")

    threads = [threading.Thread(target=sender, args=(j,)) for j in range(a.conns)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    sent_s = time.monotonic() - t0
    # Wait until the backup holds everything applied (bounded).
    end = time.monotonic() + a.drain_seconds
    while time.monotonic() < end and not (samples and samples[-1][2] >= samples[-1][1]):
        time.sleep(0.05)
    time.sleep(3 * a.poll_ms / 1000)
    stop.set()
    poller.join()
    last = status(admin, token)["backup"][0]
    if errors:
        raise SystemExit("; ".join(errors))

    # First time each order was applied / backed up, from the samples.
    lags = []
    lo, hi = first["apply_order"] + 1, samples[-1][1]
    ai = bi = 0
    for k in range(lo, hi + 1):
        while ai < len(samples) and samples[ai][1] < k:
            ai += 1
        while bi < len(samples) and samples[bi][2] < k:
            bi += 1
        if ai == len(samples) or bi == len(samples):
            break
        lags.append(max(0.0, samples[bi][0] - samples[ai][0]))
    if not lags:
        raise SystemExit("no entries measured")
    lags.sort()
    span = samples[-1][0] - samples[0][0]
    # Objects written, as the node counts them (layout format 3: one run
    # object per run). Older nodes, without that count: segments, packs
    # (one per run that wrote bodies; format 1 wrote one object per body)
    # and manifests (one per run).
    packs = last.get("packs", 0) - first.get("packs", 0)
    if "objects" in last:
        objects = last["objects"] - first["objects"]
    else:
        body_objects = packs if "packs" in last else last["bodies"] - first["bodies"]
        objects = (last["segments"] - first["segments"]) + body_objects + (last["runs"] - first["runs"])
    res = {
        "offered_per_s": a.rate,
        "delivered": total,
        "achieved_per_s": total / sent_s,
        "entries": len(lags),
        "lag_p50_ms": 1000 * statistics.median(lags),
        "lag_p99_ms": 1000 * lags[min(len(lags) - 1, int(len(lags) * 0.99))],
        "lag_max_ms": 1000 * lags[-1],
        "runs": last["runs"] - first["runs"],
        "segments": last["segments"] - first["segments"],
        "bodies": last["bodies"] - first["bodies"],
        "packs": packs,
        "objects": objects,
        "object_writes_per_s": objects / span,
        "poll_ms": a.poll_ms,
        "caught_up": last["position"] >= last["apply_order"],
    }
    print(
        f"offered {a.rate:.0f}/s, achieved {res['achieved_per_s']:.0f}/s over {sent_s:.1f} s; "
        f"backup lag over {len(lags)} entries: p50 {res['lag_p50_ms']:.0f} ms, p99 {res['lag_p99_ms']:.0f} ms, "
        f"max {res['lag_max_ms']:.0f} ms (poll {a.poll_ms:.0f} ms); {res['runs']} runs, {res['segments']} segments, "
        f"{res['bodies']} bodies, {res['packs']} packs, {objects} objects in {span:.1f} s: "
        f"{res['object_writes_per_s']:.2f} object writes/s"
    )
    if a.json:
        json.dump(res, open(a.json, "w"), indent=1)
    if not res["caught_up"]:
        raise SystemExit("the backup did not catch up within --drain-seconds")


if __name__ == "__main__":
    main()
