"""Slots, weights, budgets, on_wait, SelfDeadlock, LockLost and the memory
helpers through the Python API, with real processes and recorded intervals
(who held from when to when), never ordered by sleeps."""
import errno
import fcntl
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

import heavylock
from heavylock import _native
from helpers import wait_for


# One turn per iteration: take the lock with the given slots, weight and
# budget, record the interval, let go.  argv: path log n slots weight budget
TURNS = textwrap.dedent("""
    import os, sys, time
    from heavylock import _native
    path, log, n, slots, weight, budget = sys.argv[1:7]
    lk = _native.Lock(path)
    lk.set_slots(int(slots))
    lk.set_weight(int(weight), "declared")
    lk.set_budget(int(budget))
    for _ in range(int(n)):
        assert lk.acquire(120.0)
        t0 = time.time()
        time.sleep(0.02)
        t1 = time.time()
        lk.release()
        with open(log, "a") as f:
            f.write(f"{os.getpid()} {t0!r} {t1!r}\\n")
    lk.close()
""")

# Hold one slot until stdin closes.  argv: path slots weight label budget
HOLD = textwrap.dedent("""
    import sys
    from heavylock import _native
    path, slots, weight, label, budget = sys.argv[1:6]
    lk = _native.Lock(path)
    lk.set_slots(int(slots))
    lk.set_weight(int(weight), "measured")
    lk.set_budget(int(budget))
    lk.set_label(label)
    assert lk.acquire(60.0)
    print("held", flush=True)
    sys.stdin.read()
    lk.release()
""")


def most_at_once(intervals):
    """The largest number of recorded intervals that overlap at one instant."""
    events = sorted([(a, 1) for a, _ in intervals] + [(b, -1) for _, b in intervals],
                    key=lambda e: (e[0], e[1]))  # an end before a start at the same time
    n = best = 0
    for _, d in events:
        n += d
        best = max(best, n)
    return best


def run_turns(lockfile, log, procs, n, slots, weight=0, budget=0):
    lockfile.parent.mkdir(parents=True, exist_ok=True)
    ps = [subprocess.Popen([sys.executable, "-c", TURNS, str(lockfile), str(log), str(n),
                            str(slots), str(weight), str(budget)]) for _ in range(procs)]
    assert [p.wait(timeout=300) for p in ps] == [0] * procs
    iv = [(float(a), float(b)) for _, a, b in (line.split() for line in open(log))]
    assert len(iv) == procs * n
    return iv


def holder(lockfile, slots=1, weight=0, label="", budget=0):
    if isinstance(lockfile, Path):
        lockfile.parent.mkdir(parents=True, exist_ok=True)
    p = subprocess.Popen([sys.executable, "-c", HOLD, str(lockfile), str(slots), str(weight),
                          label, str(budget)],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline() == "held\n"
    return p


def let_go(*ps):
    for p in ps:
        p.stdin.close()
    assert [p.wait(timeout=30) for p in ps] == [0] * len(ps)


def test_two_slots_never_three_at_once(lockfile, tmp_path):
    """6 processes x 15 turns with slots=2: never 3 at once, and 2 at once
    does happen (an exclusive lock would pass the first half alone)."""
    iv = run_turns(lockfile, tmp_path / "iv.log", 6, 15, slots=2)
    assert most_at_once(iv) == 2


def test_a_third_waits_in_the_queue_and_status_lists_the_holders(lockfile, tmp_path):
    """Two slot holders with weights and labels; a third waits, listed in
    status with how == "queue", and gets in when one leaves."""
    budget = 1 << 30
    a = holder(lockfile, 2, 100 << 20, "holder-a", budget)
    b = holder(lockfile, 2, 200 << 20, "holder-b", budget)
    waiter = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent("""
            import sys
            from heavylock import _native
            lk = _native.Lock(sys.argv[1])
            lk.set_slots(2)
            lk.set_weight(50 << 20, "estimated")
            lk.set_budget(1 << 30)
            lk.set_label("the-third")
            print("got" if lk.acquire(60.0) else "timed out", flush=True)
        """), str(lockfile)], stdout=subprocess.PIPE, text=True)
    try:
        st = wait_for(lambda: (lambda s: s if any(w["pid"] == waiter.pid and w["ticket"]
                                                  for w in s["waiters"])
                               else None)(_native.status(str(lockfile))),
                      what="the third to be listed as a waiter with its ticket")
        assert st["kind"] == "slots" and st["shared"] and st["held"]
        assert st["budget"] == budget
        assert st["free_bytes"] == budget - (300 << 20)
        w = next(w for w in st["waiters"] if w["pid"] == waiter.pid)
        # A timed slot waiter watches the file ("watch"); its ticket in the
        # table is what queues it (the pg test below sees "queue").
        assert w["how"] in ("watch", "queue")
        assert (w["weight"], w["weight_source"], w["label"]) == (50 << 20, "estimated",
                                                                 "the-third")
        assert w["ticket"] > 0 and not w["exclusive"]
        got = {h["pid"]: (h["weight"], h["weight_source"], h["label"], h["exclusive"])
               for h in st["holders"]}
        assert got == {a.pid: (100 << 20, "measured", "holder-a", False),
                       b.pid: (200 << 20, "measured", "holder-b", False)}
        assert all(h["held_for"] >= 0 and h["rss"] > 0 for h in st["holders"])
        let_go(a)
        assert waiter.stdout.readline() == "got\n"
        assert waiter.wait(30) == 0
        let_go(b)
    finally:
        for p in (a, b, waiter):
            if p.poll() is None:
                p.kill()
                p.wait()


def test_a_budget_for_two_weights_admits_two_at_once(lockfile, tmp_path):
    """slots=0 (by memory) with a static budget that fits two weights and not
    three: never more than two at once, and two do run together."""
    weight = 64 << 20
    iv = run_turns(lockfile, tmp_path / "iv.log", 6, 8, slots=0, weight=weight,
                   budget=weight * 5 // 2)
    assert most_at_once(iv) == 2


@pytest.fixture
def exclusive_holder(lockfile):
    p = holder(lockfile, 1, 0, "the-holder")
    yield p
    if p.poll() is None:
        p.stdin.close()
        p.wait(30)


def test_on_wait_sees_the_holder_and_can_stop_the_wait(lockfile, exclusive_holder):
    lk = _native.Lock(str(lockfile))
    calls = []

    def on_wait(st, waited):
        calls.append((st, waited))
        return len(calls) == 2  # stop at the second notice

    t0 = time.monotonic()
    assert lk.acquire(60, on_wait=on_wait, first=0.2, every=0.2) is False
    assert time.monotonic() - t0 < 20  # stopped by on_wait, not by the 60 s
    assert not lk.held
    assert len(calls) == 2
    (st, w1), (_, w2) = calls
    assert 0.2 <= w1 < w2
    assert st["held"] and st["holder_pid"] == exclusive_holder.pid
    assert st["record"]["label"] == "the-holder"
    assert [h["pid"] for h in st["holders"]] == [exclusive_holder.pid]
    # Nothing of ours is left queued, and the handle works again.
    assert all(w["pid"] != os.getpid() for w in _native.status(str(lockfile))["waiters"])
    let_go(exclusive_holder)
    assert lk.acquire(10) is True
    lk.close()


def test_on_wait_returning_false_keeps_waiting_until_the_lock_is_free(lockfile,
                                                                      exclusive_holder):
    lk = _native.Lock(str(lockfile))
    calls = []

    def on_wait(st, waited):
        calls.append(waited)
        if len(calls) == 3:
            exclusive_holder.stdin.close()  # the holder leaves: the wait ends with the lock
        return None

    assert lk.acquire(30, on_wait=on_wait, first=0.1, every=0.1) is True
    assert len(calls) >= 3 and calls == sorted(calls)
    assert lk.held
    lk.close()


def test_on_wait_raising_propagates_with_nothing_held(lockfile, exclusive_holder):
    class Enough(Exception):
        pass

    lk = _native.Lock(str(lockfile))

    def on_wait(st, waited):
        raise Enough(f"waited {waited:.1f} s for pid {st['holder_pid']}")

    with pytest.raises(Enough, match=f"for pid {exclusive_holder.pid}"):
        lk.acquire(60, on_wait=on_wait, first=0.1)
    assert not lk.held
    let_go(exclusive_holder)
    assert lk.acquire(10) is True  # the handle is fine, and nothing else holds
    lk.close()


def test_a_flock_held_through_another_descriptor_is_a_self_deadlock(lockfile):
    """This process holds an exclusive flock on the lock file (a conftest's
    filelock, say): acquire raises SelfDeadlock at once instead of waiting
    for itself."""
    lockfile.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lockfile, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        for how in ("native", "open_lock"):
            lk = (_native.Lock(str(lockfile)) if how == "native"
                  else heavylock.open_lock(lockfile, "native"))
            t0 = time.monotonic()
            with pytest.raises(heavylock.SelfDeadlock) as exc:
                lk.acquire(30)  # the guard: a hang would end after 30 s, and fail below
            assert time.monotonic() - t0 < 5
            assert isinstance(exc.value, OSError) and exc.value.errno == errno.EDEADLK
            assert exc.value.filename == str(lockfile)
            assert not lk.held
            lk.close()
    finally:
        os.close(fd)


def test_a_self_deadlock_without_deadline_is_raised_not_a_hang(lockfile):
    lockfile.parent.mkdir(parents=True, exist_ok=True)
    code = textwrap.dedent("""
        import fcntl, os, sys
        import heavylock
        from heavylock import _native
        fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            _native.Lock(sys.argv[1]).acquire(None)
        except heavylock.SelfDeadlock as e:
            print("SelfDeadlock", e.errno, flush=True)
    """)
    r = subprocess.run([sys.executable, "-c", code, str(lockfile)], capture_output=True,
                       text=True, timeout=30)
    assert r.stdout == f"SelfDeadlock {errno.EDEADLK}\n", r.stderr


def test_same_handle_twice_is_a_self_deadlock(lockfile):
    lk = heavylock.open_lock(lockfile, "native")
    assert lk.acquire(0)
    with pytest.raises(heavylock.SelfDeadlock):
        lk.acquire(0)
    lk.close()


def test_slots_and_urls_need_the_native_backend(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    url = "postgresql://nobody@127.0.0.1:1/db?name=x"
    for backend in ("fcntl", "filelock"):
        with pytest.raises(ValueError, match="needs the native extension"):
            heavylock.open_lock(tmp_path / "l.lock", backend, slots=2)
        with pytest.raises(ValueError, match="needs the native extension"):
            heavylock.open_lock(url, backend)
    assert list(tmp_path.iterdir()) == []  # no "postgresql:" directory, no lock file
    lk = heavylock.open_lock(tmp_path / "l.lock", "native", slots=3)
    assert lk.kind == "slots"
    lk.close()


@pytest.mark.parametrize("twin", [False, True])
def test_a_url_passes_through_resolve_path_untouched(monkeypatch, tmp_path, twin):
    from heavylock import backends

    monkeypatch.chdir(tmp_path)
    if twin:
        monkeypatch.setattr(backends, "_native", None)
    url = "postgresql://ci:s3cret@db.example:5432/locks?name=llm&sslmode=disable"
    monkeypatch.setenv("HEAVYLOCK_PATH", str(tmp_path / "ignored.lock"))
    monkeypatch.setenv("HEAVYLOCK_URL", url)
    path, source, why = heavylock.resolve_path()
    assert (path, source) == (url, "HEAVYLOCK_URL")
    assert "s3cret" not in why
    monkeypatch.delenv("HEAVYLOCK_URL")
    monkeypatch.setenv("HEAVYLOCK_PATH", url)
    assert heavylock.resolve_path()[:2] == (url, "HEAVYLOCK_PATH")
    monkeypatch.setenv("HEAVYLOCK_URL", "nonsense")
    with pytest.raises(ValueError, match="HEAVYLOCK_URL='nonsense' is not a URL"):
        heavylock.resolve_path()
    assert list(tmp_path.iterdir()) == []






def test_size_parse_and_format():
    assert _native.size_parse("1048576") == 1 << 20
    assert _native.size_parse("512M") == 512 << 20
    assert _native.size_parse("1.5GiB") == 3 << 29
    assert _native.size_parse("100kb") == 100 << 10
    for bad in ("", "12Q", "-1G", " 1G", "1G\0", "99999999999T"):
        with pytest.raises(ValueError) as exc:
            _native.size_parse(bad)
        assert repr(bad) in str(exc.value)
    assert _native.size_format(3 << 29) == "1.5 GiB"
    with pytest.raises(ValueError, match="-1"):
        _native.size_format(-1)
    free = _native.mem_free()
    assert free is None or 0 < free <= (_native.mem_available() or free)


def test_setters_refuse_bad_values_and_changes_while_held(lockfile):
    lk = _native.Lock(str(lockfile))
    for bad in (-1, 1.5, "2"):
        with pytest.raises(ValueError, match="slots"):
            lk.set_slots(bad)
    with pytest.raises(ValueError, match="weight"):
        lk.set_weight(-5)
    with pytest.raises(ValueError, match="source"):
        lk.set_weight(5, "a-very-long-source-name")
    with pytest.raises(ValueError, match="budget"):
        lk.set_budget(-1)
    lk.set_slots(2)
    assert lk.acquire(0)
    with pytest.raises(RuntimeError, match="while the lock is held"):
        lk.set_slots(1)
    with pytest.raises(RuntimeError, match="while the lock is held"):
        lk.set_weight(1 << 20)
    lk.check()  # a file lock cannot be lost
    assert lk.flags == 0
    lk.release()
    with pytest.raises(RuntimeError, match="not held"):
        lk.check()
    lk.close()


def test_status_strings_never_raise_on_hostile_labels(lockfile):
    hostile = "a\x1b[31mred\x07\u202e" + "é" * 300  # control bytes, RTL override, cut mid-char
    lk = _native.Lock(str(lockfile))
    lk.set_slots(2)
    lk.set_label(hostile)
    assert lk.acquire(0)
    st = _native.status(str(lockfile))
    label = st["holders"][0]["label"]
    assert "\x1b" not in label and "\x07" not in label and label.startswith("a")
    lk.close()


# ---- losing a remote lock (needs a PostgreSQL server) ----

PG = os.environ.get("HEAVYLOCK_TEST_PG_URL")


def psql(sql):
    r = subprocess.run(["psql", "-XAtq", "-d", PG, "-c", sql], capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


@pytest.mark.skipif(not PG and os.environ.get("CI") != "true",
                    reason="no PostgreSQL server: HEAVYLOCK_TEST_PG_URL is not set "
                           "(tests/pg-cluster.sh start; eval \"$(tests/pg-cluster.sh env)\")")
def test_a_terminated_session_is_lock_lost(tmp_path):
    assert PG, "HEAVYLOCK_TEST_PG_URL is not set under CI=true"
    url = f"{PG}{'&' if '?' in PG else '?'}name=py_lost_{os.getpid()}_{time.time_ns()}"
    lk = heavylock.open_lock(url, label="about-to-lose-it")
    assert lk.kind == "pg" and lk.path == url
    assert lk.acquire(10)
    lk.check()  # held
    st = heavylock.status(url)
    assert st["kind"] == "pg" and st["held"]
    assert [h["label"] for h in st["holders"]] == ["about-to-lose-it"]
    assert psql("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                f"WHERE application_name LIKE 'heavylock {os.getpid()}@%'") == "1"
    t0 = time.monotonic()

    def lost():
        try:
            lk.check()
        except heavylock.LockLost as e:
            return e
        return None

    e = wait_for(lost, timeout=10, what="check() to raise LockLost")
    assert time.monotonic() - t0 < 5
    assert isinstance(e, OSError) and "lost" in str(e)
    with pytest.raises(heavylock.LockLost):
        lk.release()
    assert not lk.held
    assert not heavylock.status(url)["held"]
    assert lk.acquire(10)  # the next acquire connects again
    lk.close()
    # Memory admission needs a static budget on a remote lock.
    with pytest.raises(ValueError, match=r"budget=BYTES\) or Lock.set_budget"):
        heavylock.open_lock(url, slots=0).acquire(5)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(not PG and os.environ.get("CI") != "true",
                    reason="no PostgreSQL server: HEAVYLOCK_TEST_PG_URL is not set")
def test_a_remote_slot_waiter_is_listed_as_queued():
    """Two slot holders of a PostgreSQL lock; the third LISTENs for a free
    slot: status lists it with how == "queue" and the holders' labels."""
    assert PG, "HEAVYLOCK_TEST_PG_URL is not set under CI=true"
    url = f"{PG}{'&' if '?' in PG else '?'}name=py_queue_{os.getpid()}_{time.time_ns()}"
    a, b = holder(url, 2, 0, "remote-a"), holder(url, 2, 0, "remote-b")
    lk = _native.Lock(url)
    lk.set_slots(2)
    lk.set_label("remote-third")
    seen = []

    def on_wait(st, waited):
        seen.append(st)
        return True

    try:
        assert lk.acquire(30, on_wait=on_wait, first=0.3) is False
        st = seen[0]
        assert sorted(h["label"] for h in st["holders"]) == ["remote-a", "remote-b"]
        me = [w for w in st["waiters"] if w["label"] == "remote-third"]
        assert me and me[0]["how"] == "queue"
    finally:
        let_go(a, b)
        lk.close()


def test_a_timed_wait_keeps_one_ticket(lockfile):
    """A timed wait is one wait in the core, not half-second slices that
    each leave the queue and take a new ticket (a sliced waiter kept losing
    its turn to later ones)."""
    a, b = holder(lockfile, 2), holder(lockfile, 2)
    lk = _native.Lock(str(lockfile))
    lk.set_slots(2)
    got = []
    t = threading.Thread(target=lambda: got.append(lk.acquire(60)))
    t.start()

    def ticket():
        return next((w["ticket"] for w in _native.status(str(lockfile))["waiters"]
                     if w["pid"] == os.getpid() and w["ticket"]), None)

    try:
        first = wait_for(ticket, what="our ticket")
        seen = set()
        end = time.monotonic() + 1.5
        while time.monotonic() < end:
            seen.add(ticket())
            time.sleep(0.02)
        assert seen == {first}
    finally:
        let_go(a)
        t.join(30)
        let_go(b)
    assert got == [True]
    lk.close()


def test_a_server_error_names_the_server_and_hides_the_password():
    """The library's detail (libpq's words) is appended on one line, and the
    URL's password never reaches the message or the filename."""
    with pytest.raises(OSError) as exc:
        _native.Lock("postgresql://ci:s3cret@127.0.0.1:1/db?name=x")
    if exc.value.errno == errno.ENOSYS:
        pytest.skip("this heavylock was built without libpq")
    assert isinstance(exc.value, ConnectionRefusedError)
    msg = str(exc.value)
    assert "port 1 failed" in msg and "\n" not in msg and "\t" not in msg
    assert exc.value.filename == "postgresql://ci:***@127.0.0.1:1/db?name=x"
    with pytest.raises(OSError) as exc:
        _native.Lock("postgresql://ci:s3cret@127.0.0.1:1/db?name=%zz")
    assert "percent-escape" in str(exc.value) and "s3cret" not in str(exc.value)
    assert "s3cret" not in exc.value.filename
    t = heavylock.Timeout("postgresql://ci:s3cret@db/x?name=y", "held by pid 1", 5)
    assert "s3cret" not in str(t) and "postgresql://ci:***@db/x?name=y" in str(t)
