"""Lock handoff latency and uncontended cost: heavylock vs filelock vs flock(1).

Measured side by side in one run on one machine; printed as a table with
ratios.  Not a test: nothing here gates CI.

Handoff: a holder process records the time just before it releases; a waiter
process, already blocked, records the time just after its acquire returns.
The difference is the handoff latency (wall clock, both processes on one
host).  Library rows hand off between two long-lived Python processes; CLI
rows hand off between `heavylock run` / `flock` invocations that each exec
`date +%s.%N` once they hold the lock.

Usage: python bench/handoff.py [--heavylock build/c/heavylock] [--rounds 40]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time

WAITER = r"""
import os, sys, time
kind, path, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3])
rd, wr = int(sys.argv[4]), int(sys.argv[5])
if kind.startswith("heavylock"):
    from heavylock import _native
    lk = _native.Lock(path)
    timeout = None if kind == "heavylock" else 600.0
    acquire, release = (lambda: lk.acquire(timeout)), lk.release
else:
    import filelock
    poll = 0.05 if kind == "filelock" else 0.001
    fl = filelock.FileLock(path)
    acquire, release = (lambda: fl.acquire(poll_interval=poll)), fl.release
for _ in range(rounds):
    os.read(rd, 1)                 # holder: "I hold it, start waiting"
    os.write(wr, b"w")             # about to wait
    acquire()
    t = time.time()
    release()
    os.write(wr, repr(t).encode().ljust(32))
"""


def library_handoff(kind, path, rounds):
    """Latencies (s) of `rounds` handoffs from a native holder to a `kind` waiter."""
    from heavylock import _native

    to_w_r, to_w_w = os.pipe()
    to_h_r, to_h_w = os.pipe()
    p = subprocess.Popen([sys.executable, "-c", WAITER, kind, path, str(rounds), str(to_w_r),
                          str(to_h_w)], pass_fds=(to_w_r, to_h_w))
    holder = _native.Lock(path)
    out = []
    for _ in range(rounds):
        holder.acquire()
        os.write(to_w_w, b"g")
        assert os.read(to_h_r, 1) == b"w"
        # Let the waiter block (or start polling); a random delay so that a
        # polling waiter is caught at a random phase of its poll interval.
        time.sleep(random.uniform(0.02, 0.07))
        t_rel = time.time()
        holder.release()
        t_acq = float(os.read(to_h_r, 32).decode())
        out.append(t_acq - t_rel)
    p.wait()
    holder.close()
    return out


def cli_handoff(cmd_prefix, path, rounds):
    """Handoffs from a native holder to a CLI waiter that execs `date`."""
    from heavylock import _native

    holder = _native.Lock(path)
    out = []
    for _ in range(rounds):
        holder.acquire()
        p = subprocess.Popen(cmd_prefix + ["date", "+%s.%N"], stdout=subprocess.PIPE, text=True)
        time.sleep(0.05)           # the CLI is up and waiting
        t_rel = time.time()
        holder.release()
        t_run = float(p.communicate()[0])
        out.append(t_run - t_rel)
    holder.close()
    return out


def uncontended(kind, path, n):
    """Seconds per acquire+release with nobody else around."""
    if kind == "heavylock":
        from heavylock import _native
        lk = _native.Lock(path)
        acq, rel = (lambda: lk.acquire(0)), lk.release
    else:
        import filelock
        fl = filelock.FileLock(path)
        acq, rel = (lambda: fl.acquire(timeout=0)), fl.release
    for _ in range(50):
        acq(), rel()
    t0 = time.perf_counter()
    for _ in range(n):
        acq()
        rel()
    return (time.perf_counter() - t0) / n


def cli_uncontended(cmd_prefix, n):
    t0 = time.perf_counter()
    for _ in range(n):
        subprocess.run(cmd_prefix + ["true"], check=True)
    return (time.perf_counter() - t0) / n


def fmt_ms(s):
    return f"{s * 1e3:.3f} ms"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--heavylock", default="heavylock", help="the heavylock CLI")
    ap.add_argument("--rounds", type=int, default=40)
    args = ap.parse_args()
    import filelock

    d = tempfile.mkdtemp()
    path = os.path.join(d, ".llm_load.lock")
    hl, rounds = args.heavylock, args.rounds

    print(f"heavylock handoff benchmark: {rounds} handoffs each, filelock {filelock.__version__}, "
          f"{os.cpu_count()} CPUs\n")
    rows = []
    for label, fn in [
        ("heavylock (C, no deadline: kernel flock)", lambda: library_handoff("heavylock", path, rounds)),
        ("heavylock (C, deadline: inotify wake)", lambda: library_handoff("heavylock-timed", path, rounds)),
        ("filelock (default 50 ms poll)", lambda: library_handoff("filelock", path, rounds)),
        ("filelock (1 ms poll)", lambda: library_handoff("filelock-1ms", path, rounds)),
    ]:
        lat = fn()
        rows.append((label, statistics.median(lat), sorted(lat)[int(0.9 * len(lat)) - 1]))
    base = rows[2][1]
    print("| library handoff (release -> waiter holds) | median | p90 | filelock default / this |")
    print("|---|---:|---:|---:|")
    for label, med, p90 in rows:
        print(f"| {label} | {fmt_ms(med)} | {fmt_ms(p90)} | {base / med:.0f}x |")

    rows = []
    for label, prefix in [
        ("heavylock run -w 60 -- date", [hl, "run", "-q", "-w", "60", "--lock", path, "--"]),
        ("heavylock run -- date", [hl, "run", "-q", "--lock", path, "--"]),
        ("flock(1) -- date", ["flock", path]),
    ]:
        lat = cli_handoff(prefix, path, max(10, rounds // 2))
        rows.append((label, statistics.median(lat)))
    base = rows[-1][1]
    print("\n| CLI handoff (release -> command running) | median | flock(1) / this |")
    print("|---|---:|---:|")
    for label, med in rows:
        print(f"| {label} | {fmt_ms(med)} | {base / med:.2f}x |")

    n = 5000
    hl_u, fl_u = uncontended("heavylock", path, n), uncontended("filelock", path, n)
    cli_hl = cli_uncontended([hl, "run", "-q", "--lock", path, "--"], 200)
    cli_fl = cli_uncontended(["flock", path], 200)
    print("\n| uncontended acquire+release | heavylock | peer | peer / heavylock |")
    print("|---|---:|---:|---:|")
    print(f"| Python call (peer: filelock) | {hl_u * 1e6:.1f} us | {fl_u * 1e6:.1f} us | "
          f"{fl_u / hl_u:.2f}x |")
    print(f"| CLI running `true` (peer: flock(1)) | {fmt_ms(cli_hl)} | {fmt_ms(cli_fl)} | "
          f"{cli_fl / cli_hl:.2f}x |")


if __name__ == "__main__":
    main()
