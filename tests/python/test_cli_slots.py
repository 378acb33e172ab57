"""heavylock run --slots/--mem/--budget, status of slot holders, gguf estimate.

Real processes; concurrency judged from the intervals the commands record,
processes ordered by polling `status --json`, never by sleeping.
"""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from helpers import read_intervals, record_cmd, toy_gguf, wait_for

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="the slots kind is built on Linux only")



@pytest.fixture
def lockfile(tmp_path):
    """`--lock` names an existing directory (the CLI refuses to invent one)."""
    (tmp_path / "models").mkdir()
    return tmp_path / "models" / ".llm_load.lock"


def run(*args, **kw):
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, **kw)


def status(cli, lock):
    r = run(cli, "status", "--lock", lock, "--json")
    return json.loads(r.stdout)


def max_concurrent(iv):
    best = 0
    for a, _, _ in iv:
        best = max(best, sum(1 for s, e, _ in iv if s <= a < e))
    return best


def hold(cli, lock, *opts, label="holder"):
    """A `heavylock run` that holds until killed; returns once it holds."""
    p = subprocess.Popen([cli, "run", "-q", "--lock", str(lock), "-l", label, *opts, "--",
                          "sleep", "300"], start_new_session=True)
    wait_for(lambda: any(h["pid"] == p.pid for h in status(cli, lock)["holders"]),
             what=f"{label} holding")
    return p


def kill(p):
    try:
        os.killpg(p.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    p.wait(timeout=10)


@pytest.mark.parametrize("opt,value,what", [
    ("--slots", "0", "--slots"), ("--slots", "-2", "--slots"), ("--slots", "two", "--slots"),
    ("--slots", "", "--slots"), ("--mem", "2X", "--mem"), ("--mem", "-1G", "--mem"),
    ("--mem", "1.5", "--mem"), ("--mem", "nan", "--mem"), ("--budget", "0", "--budget"),
    ("--budget", "lots", "--budget"), ("--budget", "8 G", "--budget"),
])
def test_bad_values_exit_64_naming_them(cli, lockfile, opt, value, what):
    r = run(cli, "run", "--lock", lockfile, opt, value, "--", "true")
    assert r.returncode == 64, r.stderr
    assert f"invalid {what} value: '{value}'" in r.stderr
    assert not lockfile.exists()  # nothing created for a bad command line


def test_slots_two_never_three(cli, lockfile, tmp_path):
    log = tmp_path / "intervals"
    procs = [subprocess.Popen([cli, "run", "-q", "--slots", "2", "--lock", str(lockfile), "--",
                               *record_cmd(log, 0.15)]) for _ in range(6)]
    for p in procs:
        assert p.wait(timeout=60) == 0
    iv = read_intervals(log)
    assert len(iv) == 6
    assert max_concurrent(iv) == 2  # never 3, and really 2 at once


def test_third_waits_and_is_listed(cli, lockfile, tmp_path):
    a = hold(cli, lockfile, "--slots", "2", "--mem", "1G", label="a")
    b = hold(cli, lockfile, "--slots", "2", label="b")
    log = tmp_path / "third"
    c = subprocess.Popen([cli, "run", "-q", "--slots", "2", "--mem", "3G", "-l", "c",
                          "--lock", str(lockfile), "--", *record_cmd(log, 0.01)])
    try:
        # listed by the kernel (blocked) a moment before its ticket is in the table
        d = wait_for(lambda: (lambda s: s if any(w["pid"] == c.pid and "ticket" in w
                                                 for w in s["waiters"])
                              else None)(status(cli, lockfile)), what="third queued")
        assert d["kind"] == "slots" and d["shared"] and d["held"]
        by_pid = {h["pid"]: h for h in d["holders"]}
        assert set(by_pid) == {a.pid, b.pid}
        assert by_pid[a.pid]["weight"] == 1 << 30
        assert by_pid[a.pid]["weight_source"] == "declared"
        assert by_pid[a.pid]["label"] == "a"
        assert 0 <= by_pid[b.pid]["held_for"] < 60
        (w,) = [w for w in d["waiters"] if w["pid"] == c.pid]
        assert w["ticket"] > 0 and w["weight"] == 3 << 30 and w["label"] == "c"
        assert d["budget"] == "auto" and isinstance(d["free"], int)
        text = run(cli, "status", "--lock", lockfile).stdout
        assert "slot holders: 2" in text and "weight 1.0 GiB (declared)" in text
        assert "asks 3.0 GiB" in text
        assert not log.exists()
        t_kill = time.time()
        kill(a)  # a slot frees: the third gets in
        assert c.wait(timeout=30) == 0
        (start, _, _), = read_intervals(log)
        assert start >= t_kill
    finally:
        kill(a)
        kill(b)
        if c.poll() is None:
            c.kill()


def test_budget_fits_two(cli, lockfile, tmp_path):
    log = tmp_path / "intervals"
    procs = [subprocess.Popen([cli, "run", "-q", "--mem", "1G", "--budget", "2.5G",
                               "--lock", str(lockfile), "--", *record_cmd(log, 0.15)])
             for _ in range(6)]
    for p in procs:
        assert p.wait(timeout=60) == 0
    assert max_concurrent(read_intervals(log)) == 2


def test_exclusive_holder_blocks_slot_holders(cli, lockfile, tmp_path):
    log = tmp_path / "log"
    fl = subprocess.Popen(["flock", str(lockfile), "sleep", "300"], start_new_session=True)
    try:
        wait_for(lambda: status(cli, lockfile)["held"], what="flock(1) holding")
        r = run(cli, "run", "-n", "--slots", "3", "--lock", lockfile, "--", "true")
        assert r.returncode == 1
        w = subprocess.Popen([cli, "run", "-q", "--slots", "3", "--lock", str(lockfile), "--",
                              *record_cmd(log, 0.01)])
        wait_for(lambda: any(x["pid"] == w.pid and x.get("ticket")
                             for x in status(cli, lockfile)["waiters"]),
                 what="slot waiter queued")
        t = time.time()
        kill(fl)
        assert w.wait(timeout=30) == 0
        assert read_intervals(log)[0][0] >= t
    finally:
        kill(fl)


def test_flock_waiter_not_starved_by_slot_stream(cli, lockfile, tmp_path):
    """4 overlapping streams on 3 slots keep the lock shared at all times; a
    flock(1) waiter still gets in within a bounded wait."""
    stop = tmp_path / "stop"
    loop = (f"while [ ! -e {stop} ]; do {cli} run -q --slots 3 --lock {lockfile} -- "
            f"sleep 0.1; done")
    streams = [subprocess.Popen(["sh", "-c", loop], start_new_session=True) for _ in range(4)]
    try:
        wait_for(lambda: len(status(cli, lockfile)["holders"]) >= 2, what="stream running")
        t0 = time.monotonic()
        r = run("flock", "-w", "20", lockfile, "true")
        waited = time.monotonic() - t0
        assert r.returncode == 0, "flock(1) starved behind the slot holders"
        assert waited < 10
    finally:
        stop.touch()
        for s in streams:
            try:
                s.wait(timeout=30)
            except subprocess.TimeoutExpired:
                kill(s)


def test_notices_are_whole_lines(cli, lockfile):
    """Two waiters sharing one stderr: every line is one whole notice."""
    a = hold(cli, lockfile, "--slots", "2", label="x" * 300)
    b = hold(cli, lockfile, "--slots", "2", label="y" * 300)
    r, w = os.pipe()
    waiters = [subprocess.Popen([cli, "run", "-v", "-w", "2.5", "--slots", "2", "--lock",
                                 str(lockfile), "--", "true"], stderr=w) for _ in range(2)]
    os.close(w)
    try:
        for p in waiters:
            assert p.wait(timeout=30) == 1  # timed out
        out = b""
        while chunk := os.read(r, 65536):
            out += chunk
    finally:
        os.close(r)
        kill(a)
        kill(b)
    lines = out.decode().splitlines()
    notices = [ln for ln in lines if ln.startswith("heavylock: waiting for")]
    assert len(notices) >= 2
    for ln in lines:
        assert ln.startswith("heavylock: "), ln
        assert "held by 2 slot holders" in ln or "took" in ln, ln
    for ln in notices:
        assert ln.endswith(" s)"), ln


def test_status_free_and_budget_text(cli, lockfile):
    a = hold(cli, lockfile, "--mem", "512M", "--budget", "4G", label="a")
    try:
        d = status(cli, lockfile)
        assert d["budget"] == 4 << 30
        assert d["free"] == (4 << 30) - (512 << 20)
        assert "budget:  4.0 GiB, free now 3.5 GiB" in run(cli, "status", "--lock",
                                                            lockfile).stdout
    finally:
        kill(a)


def _estimate(out):
    """(total, weights, kv cache, compute) in bytes from `heavylock gguf`."""
    import re
    total = int(re.search(r"^estimate: +(\d+) bytes", out, re.M).group(1))
    kv = int(re.search(r"^kv cache \(f16, \d+ tokens\): (\d+) bytes", out, re.M).group(1))
    parts = re.search(r"= weights (\S+ \S+) \+ kv cache (\S+ \S+) \+ compute (\S+ \S+)\)", out)
    return total, kv, parts.groups()



def test_gguf_ctx_sizes_the_kv_cache(cli, tmp_path):
    model = tmp_path / "toy.gguf"
    toy_gguf(model)
    per_token = 16 * 8 * (64 + 64) * 2  # layers x kv heads x (k + v) x f16
    r = run(cli, "gguf", model)
    assert r.returncode == 0, r.stderr
    full, kv, parts = _estimate(r.stdout)
    assert kv == 4096 * per_token
    r = run(cli, "gguf", "--ctx", "256", model)
    assert r.returncode == 0, r.stderr
    small, kv, (weights, kvs, compute) = _estimate(r.stdout)
    assert kv == 256 * per_token and full - small == (4096 - 256) * per_token
    # each figure its own: compute is 64 MiB + weights / 20, not the kv cache again
    assert (weights, kvs, compute) == ("10.0 MiB", "8.0 MiB", "64.5 MiB"), r.stdout
    for bad in ("0", "-1", "x", "1e3", str(2**32 + 1)):
        r = run(cli, "gguf", "--ctx", bad, model)
        assert r.returncode == 64 and f"invalid --ctx value: '{bad}'" in r.stderr, (bad, r.stderr)


MARKED = (
    "import os, sys, time\n"
    "t0 = time.time()\n"
    "open(sys.argv[3], 'w').close()\n"  # running now: the parent may be killed
    "time.sleep(float(sys.argv[2]))\n"
    "t1 = time.time()\n"
    "with open(sys.argv[1], 'a') as f:\n"
    "    f.write(f'{os.getpid()} {t0!r} {t1!r}\\n')\n"
)


def test_killing_run_parent_keeps_the_slot_with_the_command(cli, lockfile, tmp_path):
    # Bug: the table entry's OFD lock lived only in the heavylock parent
    # (close-on-exec), so SIGKILL of the parent freed the slot while the
    # command still ran: 4 at once under --slots 2.  Now the command
    # inherits it with the flock, and the slot is free when the command ends.
    import threading
    log = tmp_path / "iv.log"
    nthreads, runs = 3, 12
    errors = []

    def launcher(t):
        try:
            for i in range(runs):
                marker = tmp_path / f"m{t}.{i}"
                p = subprocess.Popen([cli, "run", "-q", "--lock", str(lockfile), "--slots", "2",
                                      "--", sys.executable, "-c", MARKED, str(log), "0.3",
                                      str(marker)])
                if i % 2 == 0:  # half of the parents die while their command runs
                    wait_for(marker.exists, timeout=60, what=f"command {t}.{i} to start")
                    p.send_signal(signal.SIGKILL)
                assert p.wait(timeout=60) in (0, -signal.SIGKILL)
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=launcher, args=(t,)) for t in range(nthreads)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors, errors
    wait_for(lambda: log.exists() and len(log.read_text().splitlines()) == nthreads * runs,
             timeout=60, what="every command to finish")
    iv = read_intervals(log)
    assert max_concurrent(iv) <= 2, iv
    # The orphans' slots went with them: free, and two fit again at once.
    wait_for(lambda: status(cli, lockfile)["holders"] == [], what="the last slot to go")
    a = hold(cli, lockfile, "--slots", "2", label="a")
    b = hold(cli, lockfile, "--slots", "2", label="b")
    kill(a)
    kill(b)


def test_status_kind_is_flock_for_an_exclusive_holder_with_a_table(cli, lockfile):
    # Bug: once PATH.slots existed, `status --json` said "kind": "slots" for
    # an exclusive holder (heavylock run without --slots, flock(1)).
    assert run(cli, "run", "--lock", lockfile, "--slots", "2", "--", "true").returncode == 0
    assert os.path.exists(f"{lockfile}.slots")
    assert status(cli, lockfile)["kind"] == "flock"  # free
    for cmd in ([cli, "run", "-q", "--lock", str(lockfile), "--", "sleep", "300"],
                ["flock", str(lockfile), "sleep", "300"]):
        p = subprocess.Popen(cmd, start_new_session=True)
        try:
            wait_for(lambda: status(cli, lockfile)["held"], what="the exclusive holder")
            d = status(cli, lockfile)
            assert d["kind"] == "flock" and not d["shared"], d
        finally:
            kill(p)
    p = hold(cli, lockfile, "--slots", "2")
    try:
        assert status(cli, lockfile)["kind"] == "slots"
    finally:
        kill(p)


def test_status_names_the_command_after_its_run_parent_died(cli, lockfile, tmp_path):
    # The slot outlives a killed `heavylock run` with the command: status
    # names the command (not the dead parent), and the slot goes when the
    # command ends.
    pidfile = tmp_path / "pid"
    p = subprocess.Popen([cli, "run", "-q", "--lock", str(lockfile), "--slots", "2", "-l", "job",
                          "--", "sh", "-c", f"echo $$ > {pidfile}; exec sleep 300"])
    wait_for(lambda: pidfile.exists() and pidfile.read_text().strip(), what="the command")
    child = int(pidfile.read_text())
    p.send_signal(signal.SIGKILL)
    p.wait()
    try:
        holders = status(cli, lockfile)["holders"]
        assert [(h["pid"], h["label"]) for h in holders] == [(child, "job")], holders
    finally:
        os.kill(child, signal.SIGKILL)
    wait_for(lambda: status(cli, lockfile)["holders"] == [], what="the slot to go with it")
