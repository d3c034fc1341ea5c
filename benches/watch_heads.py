#!/usr/bin/env python3
"""Start a node and time it until its version vector equals a wanted one.

    watch_heads.py TANDEM CONFIG WANT [--timeout S] [--every MS]

Starts `TANDEM --config CONFIG serve` (output in serve.log beside CONFIG,
the process id in pid there), then reads the node's status over its admin
API (address from DATA/listen.json, token from DATA/admin.token) every
MS milliseconds (default 5) until `log.heads` equals WANT (the JSON of the
wanted heads). One process does it all, so the figure holds no harness
start-up and the polling costs the node one small request, not a
`tandem status` process and a Python start per poll (about 0.15 s of CPU
each on a 2-core machine, taken from the nodes being measured).

Prints one line of two numbers: the seconds from the exec to equal heads,
and from the admin API's first answer to equal heads. The node keeps
running. Exits 1 if the heads are not equal within S seconds
(default 600).
"""
import argparse
import json
import os
import subprocess
import sys
import time
import tomllib
import urllib.request

p = argparse.ArgumentParser()
p.add_argument("tandem")
p.add_argument("config")
p.add_argument("want")
p.add_argument("--timeout", type=float, default=600)
p.add_argument("--every", type=float, default=5)
a = p.parse_args()

conf_dir = os.path.dirname(os.path.abspath(a.config))
with open(a.config, "rb") as f:
    data = tomllib.load(f)["node"]["data_dir"]
want = json.loads(a.want)
listen = os.path.join(data, "listen.json")
if os.path.exists(listen):
    os.remove(listen)  # a stale one names the previous process's ports


def status():
    with open(listen) as f:
        base = json.load(f)["admin"]
    with open(os.path.join(data, "admin.token")) as f:
        token = f.read().strip()
    req = urllib.request.Request(base + "/v1/status", headers={"Authorization": "Bearer " + token})
    return json.load(urllib.request.urlopen(req, timeout=5))


started = time.time()
node = subprocess.Popen(
    [a.tandem, "--config", a.config, "serve"],
    stdout=open(os.path.join(conf_dir, "serve.log"), "w"),
    stderr=subprocess.STDOUT,
)
with open(os.path.join(conf_dir, "pid"), "w") as f:
    f.write(str(node.pid))
up = None
while True:
    if node.poll() is not None:
        sys.exit(f"the node exited ({node.returncode}); see {conf_dir}/serve.log")
    if time.time() - started > a.timeout:
        sys.exit(f"heads not equal after {a.timeout} s")
    try:
        st = status()
    except (OSError, ValueError, KeyError):
        time.sleep(a.every / 1000)
        continue
    if up is None:
        up = time.time()
    if st["log"]["heads"] == want:
        done = time.time()
        break
    time.sleep(a.every / 1000)
print(f"{done - started:.6f} {done - up:.6f}")
