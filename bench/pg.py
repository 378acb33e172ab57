"""The PostgreSQL kind beside the file lock, measured in one run.

Rows: the file lock (flock kind) on a temp file; PostgreSQL advisory locks
on the local server over TCP (127.0.0.1) and over its unix socket.

- handoff: a holder process records the time just before it releases; a
  waiter process, already blocked (a random 150-250 ms before: a pg waiter first connects once more to ask who holds, for the self-deadlock check), records the
  time just after its acquire returns.  Holder and waiter are sibling
  processes (a child waiting for its parent's lock is refused as HL_ESELF).
- uncontended: acquire(try once) + release in one process, per pair.
- 8 clients on 3 slots, each holding 5 ms per turn, for a few seconds:
  turns per second against the ideal 3 / 5 ms (bench/slots_clients.c).

Not a test: nothing here gates CI.  Needs a server: `make bench-pg` starts
a throwaway one (tests/pg-cluster.sh) and sets HEAVYLOCK_TEST_PG_URL.

Usage: python bench/pg.py [--rounds 40] [--build build/c]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

SIDE = r"""
import os, random, sys, time
from heavylock import _native
role, target, rounds, rd, wr = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
lk = _native.Lock(target)
out = []
for _ in range(rounds):
    if role == "holder":
        lk.acquire(None)
        os.write(wr, b"g")                     # waiter: start waiting
        assert os.read(rd, 1) == b"w"          # waiter: about to wait
        time.sleep(random.uniform(0.15, 0.25)) # let it block (the pg kind first asks the server who holds: a new connection)
        t = time.time()
        lk.release()
        out.append(t)
        assert os.read(rd, 1) == b"d"          # waiter let go
    else:
        assert os.read(rd, 1) == b"g"
        os.write(wr, b"w")
        lk.acquire(None)
        t = time.time()
        lk.release()
        out.append(t)
        os.write(wr, b"d")
lk.close()
print(" ".join(repr(x) for x in out))
"""


def handoff(target, rounds):
    h_r, w_w = os.pipe()  # waiter -> holder
    w_r, h_w = os.pipe()  # holder -> waiter
    env = dict(os.environ)
    holder = subprocess.Popen([sys.executable, "-c", SIDE, "holder", target, str(rounds),
                               str(h_r), str(h_w)], pass_fds=(h_r, h_w), stdout=subprocess.PIPE,
                              env=env, text=True)
    waiter = subprocess.Popen([sys.executable, "-c", SIDE, "waiter", target, str(rounds),
                               str(w_r), str(w_w)], pass_fds=(w_r, w_w), stdout=subprocess.PIPE,
                              env=env, text=True)
    for fd in (h_r, w_w, w_r, h_w):
        os.close(fd)
    rel = [float(x) for x in holder.communicate()[0].split()]
    acq = [float(x) for x in waiter.communicate()[0].split()]
    if holder.returncode or waiter.returncode or len(rel) != rounds or len(acq) != rounds:
        raise SystemExit(f"handoff on {target} failed")
    return [a - r for a, r in zip(acq, rel)]


def uncontended(target, n):
    from heavylock import _native

    lk = _native.Lock(target)
    for _ in range(20):  # warm up (the pg kind connects at open)
        lk.acquire(0)
        lk.release()
    t = time.perf_counter()
    for _ in range(n):
        lk.acquire(0)
        lk.release()
    dt = (time.perf_counter() - t) / n
    lk.close()
    return dt


def slots(build, target, seconds):
    out = subprocess.run([os.path.join(build, "slots_clients"), target, "3", "8", str(seconds),
                          "5"], check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def with_name(url, name):
    return f"{url}{'&' if '?' in url else '?'}name={name}"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--build", default="build/c")
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--heavylock", help="ignored (make bench passes the CLI)")
    args = ap.parse_args()
    url = os.environ.get("HEAVYLOCK_TEST_PG_URL")
    sock = os.environ.get("HEAVYLOCK_TEST_PG_SOCKET_URL")
    if not url:
        raise SystemExit("bench/pg.py: HEAVYLOCK_TEST_PG_URL is not set (make bench-pg starts "
                         "a throwaway server)")
    tmp = tempfile.mkdtemp(prefix="hl-bench-pg-")
    rows = [("file lock (flock)", os.path.join(tmp, "bench.lock"))]
    rows.append(("PostgreSQL, TCP 127.0.0.1", with_name(url, "bench_tcp")))
    if sock:
        rows.append(("PostgreSQL, unix socket", with_name(sock, "bench_sock")))
    print(f"{'lock':28} {'handoff median':>15} {'p90':>9} {'uncontended':>12} "
          f"{'8 on 3 slots, 5 ms':>20}")
    base = None
    for name, target in rows:
        h = sorted(handoff(target, args.rounds))
        u = uncontended(target, 500)
        s = slots(args.build, target, args.seconds)
        med, p90 = statistics.median(h), h[int(len(h) * 0.9) - 1]
        if base is None:
            base = (med, u, s["per_second"])
        print(f"{name:28} {med * 1e3:12.2f} ms {p90 * 1e3:6.2f} ms {u * 1e6:9.0f} us "
              f"{s['per_second']:8.0f}/s (max {s['max_at_once']}, ideal {s['ideal_per_second']:.0f})")
        print(f"{'':28} {med / base[0]:12.1f} x  {'':9} {u / base[1]:9.1f} x  "
              f"{s['per_second'] / base[2]:8.2f} x")


if __name__ == "__main__":
    main()
