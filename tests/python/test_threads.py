"""One native Lock handle shared by threads (issue #8, item 3).

A handle is one hold of the lock and serves one call at a time: a call that
finds another thread waiting in acquire() on the same handle fails at once
with RuntimeError; nothing is leaked, nothing freed while in use.  The
crash cases run in a child process, so that a crash fails the test instead
of killing the run.
"""

import os
import subprocess
import sys
import threading
import time

import pytest

from heavylock import _native

from helpers import wait_for


def fds_on(path):
    """Descriptors of this process open on `path` (a leaked locked fd shows here)."""
    real = os.path.realpath(path)
    out = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}") == real:
                out.append(fd)
        except OSError:
            pass
    return out


def start_waiter(lk, results):
    t = threading.Thread(target=lambda: results.append(lk.acquire()))
    t.start()
    return t


def test_second_caller_on_a_waiting_handle_fails_at_once_and_nothing_leaks(lockfile):
    # Old code: the second acquire overwrote the handle's fd, its EDEADLK
    # path closed it, the first thread then "held" a lock whose release
    # raised EBADF, and the locked descriptor stayed open until exit.
    holder = _native.Lock(str(lockfile))
    assert holder.acquire(0)
    shared = _native.Lock(str(lockfile))
    got = []
    t = start_waiter(shared, got)
    # The waiter has opened its own descriptor: it is inside acquire().
    wait_for(lambda: len(fds_on(lockfile)) == 2, what="the first thread to wait")
    for call in (lambda: shared.acquire(0), lambda: shared.acquire(5), shared.release,
                 shared.close, lambda: shared.set_label("x")):
        t0 = time.monotonic()
        with pytest.raises(RuntimeError, match="another thread waiting in acquire"):
            call()
        assert time.monotonic() - t0 < 1  # at once, not after the wait
    assert shared.held is False  # a read is fine, and the waiter has not won yet
    assert shared.path == str(lockfile)
    holder.release()
    t.join(10)
    assert got == [True] and shared.held
    shared.release()  # no EBADF: the handle still has the descriptor it locked
    holder.close()
    assert fds_on(lockfile) == []
    other = _native.Lock(str(lockfile))
    assert other.acquire(0)
    other.close()
    shared.close()


def test_a_handle_held_by_one_thread_is_released_by_another(lockfile):
    lk = _native.Lock(str(lockfile))
    t = threading.Thread(target=lambda: lk.acquire())
    t.start()
    t.join(10)
    assert lk.held
    with pytest.raises(OSError, match="this handle already holds the lock"):
        lk.acquire(0)
    lk.release()  # from the main thread: the handle, not the thread, holds it
    assert not lk.held and fds_on(lockfile) == []
    lk.close()


CLOSE_WHILE_WAITING = r"""
import os, sys, threading, time
from heavylock import _native
path = sys.argv[1]
def fds_on(path):
    real = os.path.realpath(path)
    out = []
    for fd in os.listdir("/proc/self/fd"):
        try:  # a descriptor may close between the listing and the look
            if os.readlink(f"/proc/self/fd/{fd}") == real:
                out.append(fd)
        except OSError:
            pass
    return out
holder = _native.Lock(path)
assert holder.acquire(0)
shared = _native.Lock(path)
got = []
t = threading.Thread(target=lambda: got.append(shared.acquire(float(sys.argv[2]))))
t.start()
while len(fds_on(path)) < 2:  # the waiter has opened its own descriptor
    time.sleep(0.005)
try:
    shared.close()
    print("closed", flush=True)
except RuntimeError as e:
    print("refused:", e, flush=True)
try:
    del shared  # the waiting thread keeps the object alive
except NameError:
    pass
holder.release()
t.join(10)
print("got", got, flush=True)
"""


@pytest.mark.parametrize("timeout", ["-1", "30"])
def test_close_while_another_thread_waits_is_refused_not_a_use_after_free(lockfile, timeout):
    # Old code: close() freed the handle under the waiting thread (SIGSEGV,
    # or heap-use-after-free under ASan).
    lockfile.parent.mkdir(parents=True, exist_ok=True)
    r = subprocess.run([sys.executable, "-c", CLOSE_WHILE_WAITING, str(lockfile), timeout],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "refused: this Lock handle is in use by another thread" in r.stdout
    assert "got [True]" in r.stdout


HAMMER = r"""
import os, sys, threading
from heavylock import _native
path, nthreads, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
shared = _native.Lock(path)
inside = []
counts = {"won": 0, "busy": 0, "held": 0, "false": 0}
mu = threading.Lock()
def work(i):
    for _ in range(rounds):
        try:
            ok = shared.acquire(0.002 if i % 2 else 0)
        except RuntimeError:
            with mu: counts["busy"] += 1
            continue
        except OSError as e:
            assert "already holds" in str(e), e
            with mu: counts["held"] += 1
            continue
        if not ok:
            with mu: counts["false"] += 1
            continue
        with mu:
            counts["won"] += 1
            inside.append(i)
            assert len(inside) == 1, inside
            inside.remove(i)
        try:
            shared.release()
        except RuntimeError:
            # another thread entered acquire() meanwhile: retry until it is done
            while True:
                try:
                    shared.release(); break
                except RuntimeError:
                    pass
errors = []
def guarded(i):
    try:
        work(i)
    except BaseException as e:  # a thread's exception does not fail the process
        errors.append(repr(e))
ts = [threading.Thread(target=guarded, args=(i,)) for i in range(nthreads)]
[t.start() for t in ts]
[t.join() for t in ts]
shared.close()
real = os.path.realpath(path)
leaked = [fd for fd in os.listdir("/proc/self/fd")
          if os.path.exists(f"/proc/self/fd/{fd}") and os.path.realpath(f"/proc/self/fd/{fd}") == real]
print("counts", counts, "leaked", leaked, "errors", errors, flush=True)
assert not leaked and not errors
assert _native.Lock(path).acquire(0)
"""


def test_many_threads_hammering_one_handle_never_crash_or_leak(lockfile):
    lockfile.parent.mkdir(parents=True, exist_ok=True)
    r = subprocess.run([sys.executable, "-c", HAMMER, str(lockfile), "8", "300"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "'won': 0," not in r.stdout
