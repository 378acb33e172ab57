"""Mixed-client stress of one lock file: exclusion, crashes, stops, deletes.

    python bench/stress/stress.py [--short] [--procs 64] [--acq 500]
        [--crashes 100] [--heavylock build/c/heavylock] [--client build/c/stress_client]

Phases, each on a fresh lock file:
  mixed     PROCS processes x ACQ acquisitions, spread over every client kind
            (libheavylock's C API, `heavylock run`, flock(1), the Python
            package's native / filelock / fcntl backends, PyPI filelock used
            directly) and every mode (blocking, timed in 50 ms slices,
            try-once with 1-16 ms backoff)
  pidfile   the Python pidfile backend alone (it locks a different file and
            excludes only its own kind)
  crashes   CRASHES trials: a client (any kind) is SIGKILLed at a random
            point and replaced; every other trial the victim is the holder
            that status names, so the kill lands inside a critical section
  sigstop   the holder is SIGSTOPped for a second: nobody may get the lock,
            status must keep naming the holder
  delete    the lock file is deleted or replaced (renamed over) while held and
            while waited on, over and over; heavylock's clients only: flock(1)
            and filelock have no defence against it (they lock whatever inode
            the path names when they open it)
Every critical section records its interval (client.c, pyclient.py); a
killed holder's interval ends at its kill time.  Prints acquisitions/s,
overlaps, and per client kind the worst wait against the fair share
(fair share = other contenders x the mean time per acquisition, i.e. the
wait of a perfect FIFO queue).  Exits 1 if any interval overlaps another
or a phase fails.
"""
import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))

failures = []


def fail(msg):
    failures.append(msg)
    print(f"FAIL: {msg}", flush=True)


class Clients:
    """Start client processes of every kind, each in its own process group."""

    def __init__(self, a, lock, logdir):
        self.a, self.lock, self.logdir = a, lock, logdir
        self.n = 0

    def argv(self, kind, mode, n, hold_us):
        a, lock = self.a, self.lock
        self.n += 1
        log = os.path.join(self.logdir, f"{self.n:04d}-{kind}-{mode}.log")
        if kind == "c-api":
            return [a.client, "api", lock, log, str(n), mode, str(hold_us)]
        if kind in ("cli", "flock1"):
            rec = [a.client, "record", log, kind, mode, "{T}", str(hold_us)]
            if kind == "cli":
                opt = {"block": [], "timed": ["-w", "0.05"], "try": ["-n"]}[mode]
                tool = [a.heavylock, "run", "-q", *opt, "--lock", lock, "--"]
            else:
                opt = {"block": [], "timed": ["-w", "0.05"], "try": ["-n"]}[mode]
                tool = ["flock", *opt, lock]
            return [a.client, "cmd", log, str(n), mode, str(hold_us), "--", *tool, *rec]
        py = kind[3:] if kind.startswith("py-") else kind
        return [sys.executable, os.path.join(HERE, "pyclient.py"), py, lock, log, str(n), mode,
                str(hold_us)]

    def start(self, kind, mode, n, hold_us, stderr=None):
        return subprocess.Popen(self.argv(kind, mode, n, hold_us), start_new_session=True,
                                stderr=stderr)


def group_pids(pgid):
    pids = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    s = f.read()
                if int(s[s.rindex(")") + 2:].split()[2]) == pgid:
                    pids.append(int(d))
            except (OSError, ValueError, IndexError):
                pass
    return pids


def pgid_of(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            s = f.read()
        return int(s[s.rindex(")") + 2:].split()[2])
    except (OSError, ValueError, IndexError):
        return None


def read_logs(logdir, kills=None):
    """Intervals (t_acq, t_rel, kind, mode, wait, pid) from every log; a
    section without its R line ends at its process's kill time."""
    kills = kills or {}
    acq, rel = {}, {}
    for name in os.listdir(logdir):
        with open(os.path.join(logdir, name)) as f:
            for line in f:
                p = line.split()
                if not p or (p[0] == "A" and len(p) != 6) or (p[0] == "R" and len(p) != 4):
                    continue  # a line cut by a kill: its writer died before writing it
                if p[0] == "A":
                    acq[(int(p[3]), p[5])] = (p[1], p[2], float(p[4]), float(p[5]))
                else:
                    rel[(int(p[1]), p[2])] = float(p[3])
    out, unended = [], 0
    for (pid, key), (kind, mode, t_req, t_acq) in acq.items():
        t_rel = rel.get((pid, key))
        if t_rel is None:
            if pid not in kills:
                unended += 1
                t_rel = t_acq  # cannot judge; counted below
            else:
                t_rel = kills[pid]
        out.append((t_acq, t_rel, kind, mode, t_acq - t_req, pid))
    out.sort()
    return out, unended


def count_overlaps(iv):
    n, end = 0, float("-inf")
    for t_acq, t_rel, *_ in iv:
        if t_acq < end:
            n += 1
        end = max(end, t_rel)
    return n


def report(name, iv, contenders, t0, t1, unended=0, table=True):
    ov = count_overlaps(iv)
    total = len(iv)
    span = (max(r for _, r, *_ in iv) - min(a for a, *_ in iv)) if iv else 0
    per = span / total if total else 0
    fair = max(contenders - 1, 1) * per
    print(f"\n== {name}: {total} acquisitions in {t1 - t0:.1f} s "
          f"({total / (t1 - t0):.0f}/s), {contenders} contenders, overlaps {ov}"
          + (f", {unended} sections never ended" if unended else ""))
    if ov:
        fail(f"{name}: {ov} overlapping critical sections")
    if unended:
        fail(f"{name}: {unended} critical sections without a release")
    kinds = {}
    if not table:
        return {"acquisitions": total, "seconds": t1 - t0, "per_second": total / (t1 - t0),
                "overlaps": ov}
    for t_acq, t_rel, kind, mode, wait, pid in iv:
        kinds.setdefault(kind, []).append(wait)
        kinds.setdefault(f"{kind}/{mode}", []).append(wait)
    print(f"   fair share = {max(contenders - 1, 1)} x {per * 1000:.2f} ms = {fair * 1000:.0f} ms")
    print(f"   {'client':<22}{'n':>7}{'mean wait':>12}{'p99 wait':>12}{'worst wait':>12}"
          f"{'worst/fair':>12}")
    rows = {}
    for kind in sorted(kinds):
        w = sorted(kinds[kind])
        p99 = w[min(len(w) - 1, int(len(w) * 0.99))]
        rows[kind] = {"n": len(w), "mean": sum(w) / len(w), "p99": p99, "worst": w[-1],
                      "ratio": w[-1] / fair if fair else 0}
        print(f"   {kind:<22}{len(w):>7}{sum(w) / len(w) * 1000:>10.1f}ms{p99 * 1000:>10.1f}ms"
              f"{w[-1] * 1000:>10.1f}ms{rows[kind]['ratio']:>11.1f}x")
    return {"acquisitions": total, "seconds": t1 - t0, "per_second": total / (t1 - t0),
            "overlaps": ov, "fair_share": fair, "kinds": rows}


def wait_all(procs, timeout, what):
    end = time.monotonic() + timeout
    ok = True
    for p in procs:
        try:
            rc = p.wait(timeout=max(0.1, end - time.monotonic()))
            if rc != 0:
                fail(f"{what}: a client exited {rc}: {' '.join(p.args[:4])}")
                ok = False
        except subprocess.TimeoutExpired:
            fail(f"{what}: a client did not finish in {timeout:.0f} s: {' '.join(p.args[:4])}")
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
            ok = False
    return ok


MIXED_KINDS = ["c-api", "cli", "flock1", "py-native", "py-filelock", "py-fcntl", "pypi-filelock"]
MODES = ["block", "timed", "try"]
HEAVYLOCK_KINDS = ["c-api", "cli", "py-native"]


def fresh(base, name):
    d = os.path.join(base, name)
    os.makedirs(os.path.join(d, "logs"))
    lock = os.path.join(d, "models", ".llm_load.lock")
    os.makedirs(os.path.dirname(lock))
    return lock, os.path.join(d, "logs")


def phase_mixed(a, base, results):
    lock, logs = fresh(base, "mixed")
    cl = Clients(a, lock, logs)
    combos = [(k, m) for m in MODES for k in MIXED_KINDS]
    t0 = time.monotonic()
    procs = [cl.start(*combos[i % len(combos)], a.acq, a.hold_us) for i in range(a.procs)]
    wait_all(procs, a.timeout, "mixed")
    t1 = time.monotonic()
    iv, unended = read_logs(logs)
    if len(iv) != a.procs * a.acq:
        fail(f"mixed: {len(iv)} acquisitions recorded, expected {a.procs * a.acq}")
    results["mixed"] = report("mixed clients", iv, a.procs, t0, t1, unended)


def phase_pidfile(a, base, results):
    lock, logs = fresh(base, "pidfile")
    cl = Clients(a, lock, logs)
    n = max(2, a.procs // 8)
    t0 = time.monotonic()
    procs = [cl.start("py-pidfile", MODES[i % 3], a.acq, a.hold_us) for i in range(n)]
    wait_all(procs, a.timeout, "pidfile")
    iv, unended = read_logs(logs)
    results["pidfile"] = report("pidfile backend (alone)", iv, n, t0, time.monotonic(), unended)


def phase_crashes(a, base, results):
    lock, logs = fresh(base, "crashes")
    cl = Clients(a, lock, logs)
    kinds = [(k, m) for k in MIXED_KINDS for m in ("block", "timed")]
    hold = max(a.hold_us, 20000)  # long enough for a kill to land inside a section
    pool = [cl.start(*random.choice(kinds), 10 ** 6, hold) for _ in range(8)]
    kills, kill_times, held_kills = {}, [], 0
    t0 = time.monotonic()
    for trial in range(a.crashes):
        time.sleep(random.uniform(0, 0.03))
        i = random.randrange(len(pool))
        if trial % 2 == 0:  # every other trial kills the holder itself, mid-section
            st = status(a, lock)
            pg = pgid_of(st["holder"]["pid"]) if st["held"] else None
            i = next((k for k, p in enumerate(pool) if p.pid == pg), i)
        victim = pool[i]
        # Freeze the group first, so that the pids read next are all of them
        # (a child forked meanwhile is stopped with it); its sections end here.
        t_kill = time.monotonic()
        os.killpg(victim.pid, signal.SIGSTOP)
        pids = group_pids(victim.pid)
        os.killpg(victim.pid, signal.SIGKILL)
        victim.wait()
        for pid in pids:
            kills[pid] = t_kill
        kill_times.append(t_kill)
        pool[i] = cl.start(*random.choice(kinds), 10 ** 6, hold)
    time.sleep(0.3)  # let the last replacements make progress
    t_end = time.monotonic()
    for p in pool:
        os.killpg(p.pid, signal.SIGSTOP)
        pids = group_pids(p.pid)
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
        for pid in pids:
            kills[pid] = t_end
    iv, unended = read_logs(logs, kills)
    held_kills = sum(1 for t_acq, t_rel, *_ in iv if t_rel in kill_times)
    acqs = sorted(t for t, *_ in iv)
    stalls = []
    for tk in kill_times:
        nxt = next((t for t in acqs if t > tk), None)
        stalls.append((nxt - tk) if nxt is not None else float("inf"))
    worst = max(stalls) if stalls else 0
    r = report(f"crashes ({a.crashes} SIGKILLs)", iv, 8, t0, t_end, unended)
    print(f"   killed while holding: {held_kills}; longest time from a kill to the next "
          f"acquisition: {worst * 1000:.0f} ms")
    if worst > 5:
        fail(f"crashes: no acquisition for {worst:.1f} s after a kill (stale lock?)")
    r.update(killed_holding=held_kills, worst_stall=worst)
    results["crashes"] = r


def status(a, lock):
    r = subprocess.run([a.heavylock, "status", "--json", "--lock", lock], capture_output=True,
                       text=True)
    return json.loads(r.stdout)


def phase_sigstop(a, base, results):
    lock, logs = fresh(base, "sigstop")
    cl = Clients(a, lock, logs)
    combos = [("c-api", "block"), ("cli", "timed"), ("flock1", "block"), ("py-native", "timed"),
              ("pypi-filelock", "block"), ("c-api", "try")]
    procs = [cl.start(k, m, 60, 20000) for k, m in combos]
    t0 = time.monotonic()
    end = time.monotonic() + 30
    victim = None
    while victim is None and time.monotonic() < end:
        st = status(a, lock)
        if not (st["held"] and st["holder"]["pid"]):
            time.sleep(0.002)
            continue
        pid = st["holder"]["pid"]
        try:
            os.kill(pid, signal.SIGSTOP)
        except ProcessLookupError:
            continue
        # It may have let go between the look and the stop: check, now that
        # it cannot let go any more.
        st = status(a, lock)
        if st["held"] and st["holder"]["pid"] == pid:
            victim = pid
        else:
            os.kill(pid, signal.SIGCONT)
    if victim is None:
        fail("sigstop: never caught a holder")
        wait_all(procs, a.timeout, "sigstop")
        return
    t_stop = time.monotonic()
    time.sleep(1.0)
    during = status(a, lock)
    t_cont = time.monotonic()
    os.kill(victim, signal.SIGCONT)
    wait_all(procs, a.timeout, "sigstop")
    iv, unended = read_logs(logs)
    got = [t for t, *_ in iv if t_stop < t < t_cont]
    print(f"\n== sigstop: holder pid {victim} stopped for {t_cont - t_stop:.1f} s: "
          f"{len(got)} acquisitions by others meanwhile; status named pid "
          f"{during['holder']['pid'] if during['held'] else None} with "
          f"{len(during['waiters'])} waiters seen")
    if got:
        fail(f"sigstop: {len(got)} acquisitions while the holder was stopped")
    if not during["held"] or during["holder"]["pid"] != victim:
        fail("sigstop: status did not name the stopped holder")
    results["sigstop"] = report("sigstop phase (waits include the stop)", iv, len(combos), t0,
                                time.monotonic(), unended, table=False)
    results["sigstop"].update(acquired_while_stopped=len(got))


def phase_delete(a, base, results):
    lock, logs = fresh(base, "delete")
    cl = Clients(a, lock, logs)
    combos = [(k, m) for k in HEAVYLOCK_KINDS for m in MODES]
    n = max(len(combos), a.procs // 4)
    acq = max(20, a.acq // 5)
    t0 = time.monotonic()
    errlog = open(os.path.join(os.path.dirname(logs), "stderr"), "w+")
    procs = [cl.start(*combos[i % len(combos)], acq, a.hold_us, stderr=errlog)
             for i in range(n)]
    deletes = replaces = 0
    tmp = lock + ".new"
    while any(p.poll() is None for p in procs):
        time.sleep(random.uniform(0.005, 0.03))
        try:
            if random.random() < 0.5:
                os.unlink(lock)
                deletes += 1
            else:
                open(tmp, "w").close()
                os.rename(tmp, lock)
                replaces += 1
        except FileNotFoundError:
            pass
    wait_all(procs, a.timeout, "delete")
    errlog.seek(0)
    told = sum("was deleted or replaced" in line for line in errlog)
    errlog.close()
    iv, unended = read_logs(logs)
    r = report(f"delete/replace ({deletes} deletes, {replaces} replaces while in use)", iv, n,
               t0, time.monotonic(), unended)
    print(f"   `heavylock run` holders that warned their file was lost: {told}")
    r.update(deletes=deletes, replaces=replaces, cli_warned=told)
    results["delete"] = r


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--short", action="store_true", help="the CI form (about a minute)")
    ap.add_argument("--procs", type=int)
    ap.add_argument("--acq", type=int)
    ap.add_argument("--crashes", type=int)
    ap.add_argument("--hold-us", type=int, default=500)
    ap.add_argument("--timeout", type=float, default=3600)
    ap.add_argument("--heavylock", default=os.path.join(ROOT, "build/c/heavylock"))
    ap.add_argument("--client", default=os.path.join(ROOT, "build/c/stress_client"))
    ap.add_argument("--phases", default="mixed,pidfile,crashes,sigstop,delete")
    ap.add_argument("--json", help="write the figures here")
    ap.add_argument("--seed", type=int, default=int(time.time()))
    a = ap.parse_args()
    a.procs = a.procs or (16 if a.short else 64)
    a.acq = a.acq or (25 if a.short else 500)
    a.crashes = a.crashes if a.crashes is not None else (30 if a.short else 100)
    if a.short:
        a.timeout = min(a.timeout, 300)
    random.seed(a.seed)
    print(f"stress: {a.procs} processes x {a.acq} acquisitions, {a.crashes} crash trials, "
          f"hold {a.hold_us} us, seed {a.seed}", flush=True)
    results = {}
    with tempfile.TemporaryDirectory(prefix="heavylock-stress-") as base:
        for ph in a.phases.split(","):
            globals()[f"phase_{ph}"](a, base, results)
            sys.stdout.flush()
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=1)
    print("\nstress: " + ("FAILED: " + "; ".join(failures) if failures else "ok, 0 overlaps"))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
