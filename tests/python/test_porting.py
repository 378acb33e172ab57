"""What users porting from other lock libraries meet (docs/porting.md).

fasteners' InterProcessLock takes a POSIX record lock (fcntl.lockf), which
Linux keeps apart from flock(2): heavylock does not exclude a fasteners
holder, and fasteners does not exclude a heavylock holder.  Measured both
ways with real processes that record the interval in which each believed
it held the lock; the two intervals overlap.  (filelock takes flock(2) and
is excluded both ways: test_cli.py.)"""
import os
import subprocess
import sys

import pytest

from helpers import held_by, wait_for

fasteners = pytest.importorskip(
    "fasteners", reason="fasteners is not installed (requirements-dev.txt installs it)")

# Holds `lock` with fasteners until killed; the file `flag` says when it got it.
FASTENERS_HOLDER = r"""
import sys, time, fasteners
lk = fasteners.InterProcessLock(sys.argv[1])
assert lk.acquire(blocking=True, timeout=30)
open(sys.argv[2], "w").write(repr(time.time()))
time.sleep(60)
"""

# Takes `lock` with fasteners (waiting at most 10 s) and prints how long it waited.
FASTENERS_TAKER = r"""
import sys, time, fasteners
t0 = time.monotonic()
lk = fasteners.InterProcessLock(sys.argv[1])
got = lk.acquire(blocking=True, timeout=10)
print(got, time.monotonic() - t0)
"""


def test_fasteners_is_not_excluded_by_a_heavylock_holder(cli, tmp_path):
    lock = tmp_path / ".llm_load.lock"
    holder = subprocess.Popen([cli, "run", "--lock", str(lock), "--", "sleep", "60"],
                              start_new_session=True)
    try:
        wait_for(lambda: held_by(cli, lock) == holder.pid, what="heavylock to hold the lock")
        r = subprocess.run([sys.executable, "-c", FASTENERS_TAKER, str(lock)],
                           capture_output=True, text=True, timeout=60)
        got, waited = r.stdout.split()
        # fasteners got "the lock" at once, while heavylock held it
        assert got == "True" and float(waited) < 5, r.stdout
        assert held_by(cli, lock) == holder.pid  # and heavylock still held it then
    finally:
        os.killpg(holder.pid, 9)
        holder.wait()


def test_heavylock_is_not_excluded_by_a_fasteners_holder(cli, tmp_path):
    lock, flag = tmp_path / ".llm_load.lock", tmp_path / "fasteners-holds"
    holder = subprocess.Popen([sys.executable, "-c", FASTENERS_HOLDER, str(lock), str(flag)])
    try:
        wait_for(flag.exists, what="fasteners to hold the lock")
        # --nonblock: a heavylock that were excluded would exit 1 at once
        r = subprocess.run([cli, "run", "--nonblock", "--lock", str(lock), "--", "true"],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        # the Python API the same: acquire(0) succeeds while fasteners holds
        import heavylock
        lk = heavylock.open_lock(str(lock))
        try:
            assert lk.acquire(0) is True
        finally:
            lk.release()
        assert holder.poll() is None  # fasteners held it the whole time
    finally:
        holder.kill()
        holder.wait()


def test_filelock_excludes_and_is_excluded(cli, tmp_path):
    # The contrast the porting guide draws: filelock's flock is the same lock.
    filelock = pytest.importorskip("filelock")
    lock = tmp_path / ".llm_load.lock"
    holder = subprocess.Popen([cli, "run", "--lock", str(lock), "--", "sleep", "60"],
                              start_new_session=True)
    try:
        wait_for(lambda: held_by(cli, lock) == holder.pid, what="heavylock to hold the lock")
        with pytest.raises(filelock.Timeout):
            filelock.FileLock(str(lock)).acquire(timeout=0.2)
    finally:
        os.killpg(holder.pid, 9)
        holder.wait()
    with filelock.FileLock(str(lock), timeout=5):
        r = subprocess.run([cli, "run", "--nonblock", "--lock", str(lock), "--", "true"],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 1, r.stderr
