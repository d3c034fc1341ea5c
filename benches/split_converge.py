#!/usr/bin/env python3
"""Convergence after a network cut heals, against the number of conflicting
messages (see split_converge.sh, which builds the binary and calls this).

For each N in COUNTS: a fresh master A and slave B, each dialling the other
through a UDP relay in this process. The relays are cut; once both links
are down, N LMTP deliveries go into INBOX on each node at once (UIDs 1..N
on both sides: N colliding UIDs, 2N messages under them). Then the relays
heal and the clock starts; converged = both nodes hold the same digest and
nothing is marked, kept aside or awaiting the master. The master moves
every message under a colliding UID, so the renumbering rate is the
messages it moved (as applied on both nodes) over the convergence time.
Finally both INBOXes must show 2N messages over IMAP.
"""
import imaplib
import json
import os
import socket
import subprocess
import sys
import threading
import time

T = os.environ["T"]
OUT = os.environ["OUT"]
COUNTS = [int(x) for x in os.environ.get("COUNTS", "10 1000").split()]
CONNS = int(os.environ.get("CONNS", "4"))
USER = "u@example.org"


def free_port(kind):
    s = socket.socket(socket.AF_INET, kind)
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


class Relay:
    """Forwards datagrams from the dialling node to `upstream` and back;
    drops everything while cut."""

    def __init__(self, upstream):
        self.front = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.front.bind(("127.0.0.1", 0))
        self.back = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.back.bind(("127.0.0.1", 0))
        for s in (self.front, self.back):
            s.settimeout(0.05)
        self.port = self.front.getsockname()[1]
        self.to = ("127.0.0.1", upstream)
        self.client = None
        self.open = True
        self.stop = False
        threading.Thread(target=self._up, daemon=True).start()
        threading.Thread(target=self._down, daemon=True).start()

    def _up(self):
        while not self.stop:
            try:
                data, frm = self.front.recvfrom(65536)
            except socket.timeout:
                continue
            self.client = frm
            if self.open:
                self.back.sendto(data, self.to)

    def _down(self):
        while not self.stop:
            try:
                data, _ = self.back.recvfrom(65536)
            except socket.timeout:
                continue
            if self.open and self.client:
                self.front.sendto(data, self.client)


class Node:
    def __init__(self, root, name, port, peer, mode):
        self.dir = os.path.join(root, name)
        os.makedirs(self.dir)
        self.lmtp, self.imap, self.admin = (free_port(socket.SOCK_STREAM) for _ in range(3))
        self.conf = os.path.join(self.dir, "tandem.toml")
        with open(self.conf, "w") as f:
            f.write(
                f'[node]\nid = "{name}"\ndata_dir = "{self.dir}/data"\n'
                f'[imap]\nlisten = "127.0.0.1:{self.imap}"\ntls_listen = "127.0.0.1:0"\n'
                f'[lmtp]\nlisten = "127.0.0.1:{self.lmtp}"\n[admin]\nlisten = "127.0.0.1:{self.admin}"\n'
                f'[mirror]\nlisten = "127.0.0.1:{port}"\npeers = ["127.0.0.1:{peer}"]\n'
                f'secret = "benchmark shared secret"\nmode = "{mode}"\n'
                f"reconnect_min_ms = 20\nreconnect_max_ms = 200\nidle_timeout_ms = 1000\n"
            )
        self.log = open(os.path.join(self.dir, "serve.log"), "w")
        self.proc = subprocess.Popen([T, "--config", self.conf, "serve"], stdout=self.log, stderr=subprocess.STDOUT)
        for _ in range(600):
            if "lmtp listening" in open(os.path.join(self.dir, "serve.log")).read():
                break
            time.sleep(0.05)
        else:
            sys.exit(f"{name} did not start")
        self.token = open(os.path.join(self.dir, "data", "admin.token")).read().strip()

    def get(self, path):
        s = socket.create_connection(("127.0.0.1", self.admin))
        s.sendall(f"GET {path} HTTP/1.0\r\nAuthorization: Bearer {self.token}\r\n\r\n".encode())
        resp = b""
        while True:
            b = s.recv(65536)
            if not b:
                break
            resp += b
        s.close()
        head, body = resp.split(b"\r\n\r\n", 1)
        assert b" 200" in head.split(b"\r\n")[0], (path, head)
        return json.loads(body)

    def quiet(self):
        c = self.get("/v1/status")["conflicts"]
        return c["uid_collisions"] == 0 and c["name_conflicts"] == 0 and c["kept_aside"] == 0 and c["awaiting_master"] == 0

    def links_up(self):
        return all(l["state"] == "connected" for l in self.get("/v1/status")["mirror"]["outgoing"])

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=60)


def deliver(node, tag, n):
    """n LMTP deliveries over CONNS connections; every one must get its 250."""
    def worker(k):
        s = socket.create_connection(("127.0.0.1", node.lmtp))
        f = s.makefile("rb")
        f.readline()
        s.sendall(b"LHLO bench\r\n")
        while f.readline()[3:4] == b"-":
            pass
        for i in range(k, n, CONNS):
            s.sendall(b"MAIL FROM:<b@x>\r\nRCPT TO:<%s>\r\nDATA\r\nSubject: %s-%d\r\nMessage-ID: <%d@%s>\r\n\r\nbody %d\r\n.\r\n"
                      % (USER.encode(), tag.encode(), i, i, tag.encode(), i))
            for _ in range(4):
                r = f.readline()
            assert r.startswith(b"250"), r
        s.close()
    ts = [threading.Thread(target=worker, args=(k,)) for k in range(min(CONNS, n))]
    for t in ts:
        t.start()
    for t in ts:
        t.join()


def inbox_count(node):
    c = imaplib.IMAP4("127.0.0.1", node.imap)
    c.login(USER, "secret")
    typ, data = c.select("INBOX")
    assert typ == "OK", data
    typ, uids = c.uid("SEARCH", "ALL")
    c.logout()
    return int(data[0]), len(set(uids[0].split()))


def wait(what, cond, secs):
    deadline = time.monotonic() + secs
    while not cond():
        if time.monotonic() > deadline:
            sys.exit(f"timed out: {what}")
        time.sleep(0.02)


def run(n):
    root = os.path.join(OUT, f"n{n}")
    ma, mb = free_port(socket.SOCK_DGRAM), free_port(socket.SOCK_DGRAM)
    ab, ba = Relay(mb), Relay(ma)
    a = Node(root, "bench-a", ma, ab.port, "master")
    b = Node(root, "bench-b", mb, ba.port, "slave")
    try:
        subprocess.run([T, "--config", a.conf, "user", "add", USER, "--password-stdin"], input=b"secret\n", check=True, capture_output=True)
        wait("the user to reach B", lambda: a.get("/v1/digest") == b.get("/v1/digest") and a.links_up() and b.links_up(), 60)
        ab.open = ba.open = False
        wait("both links to drop", lambda: not a.links_up() and not b.links_up(), 30)
        t = time.monotonic()
        ts = [threading.Thread(target=deliver, args=(x, tag, n)) for x, tag in ((a, "a"), (b, "b"))]
        for th in ts:
            th.start()
        for th in ts:
            th.join()
        wait("B to place its deliveries", lambda: b.get("/v1/status")["conflicts"]["awaiting_master"] == 0, 60)
        ingest = time.monotonic() - t
        assert inbox_count(a)[0] == n and inbox_count(b)[0] == n
        ab.open = ba.open = True
        healed = time.monotonic()
        up = None
        while True:
            if up is None and a.links_up() and b.links_up():
                up = time.monotonic() - healed
            if a.get("/v1/digest") == b.get("/v1/digest") and a.quiet() and b.quiet():
                took = time.monotonic() - healed
                break
            if time.monotonic() - healed > 3600:
                sys.exit("the nodes did not converge within an hour")
            time.sleep(0.02)
        moved = a.get("/v1/status")["conflicts"]["resolved"]
        assert moved == b.get("/v1/status")["conflicts"]["resolved"]
        for x in (a, b):
            exists, uids = inbox_count(x)
            assert exists == 2 * n and uids == 2 * n, (exists, uids, 2 * n)
        up = up if up is not None else took
        return {"per_side": n, "ingest_s": ingest, "link_up_s": up, "converged_s": took, "moved": moved,
                "moved_per_s": moved / took, "moved_per_s_after_up": moved / max(took - up, 1e-3)}
    finally:
        a.stop()
        b.stop()
        ab.stop = ba.stop = True


def main():
    rows = []
    for n in COUNTS:
        r = run(n)
        rows.append(r)
        print(json.dumps(r), flush=True)
        if os.environ.get("RESULTS"):
            with open(os.environ["RESULTS"], "a") as f:
                f.write(json.dumps({"split_converge": r}) + "\n")
    print()
    print("| conflicting per side | messages moved | links up after heal (s) | converged after heal (s) | moved/s from the heal | moved/s from links up | deliveries during the cut (s) |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['per_side']:,} | {r['moved']:,} | {r['link_up_s']:.2f} | {r['converged_s']:.2f} | {r['moved_per_s']:,.0f} "
              f"| {r['moved_per_s_after_up']:,.0f} | {r['ingest_s']:.1f} |")


if __name__ == "__main__":
    main()
