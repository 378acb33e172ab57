"""The watch over a held local lock for a wait that would never end: this
very process waiting for the lock file through another handle while
heavylock holds it for the test (docs/migrating.md section 0's autouse
fixture left in place).  The plugin's own wait sees such a holder itself
(locking.LockClient.never_ends); this watch covers the other order, where
the plugin holds and the old code waits.

Two kinds of wait are recognized, each by its own evidence:

- blocked in flock(2) (the fcntl path): the kernel lists the waiter in
  /proc/locks (``->``) with this pid and the lock file's device and inode;
- filelock's polling loop: it keeps no descriptor open between tries (so
  /proc/self/fd cannot show it), but the test thread's stack holds a frame
  of ``filelock`` whose ``self.lock_file`` is the lock file.

The test then fails with heavylock.SelfDeadlock: raised in the waiting
thread (PyThreadState_SetAsyncExc) for the polling loop; for flock(2), by a
signal whose handler raises it, which interrupts the call (the handler is
installed only while a heavy test on the main thread holds the lock, and
only over the default disposition).  The lock is never released for it.
"""

from __future__ import annotations

import ctypes
import errno
import os
import signal
import sys
import threading

from heavylock.backends import SelfDeadlock

CHECK_EVERY = 2.5          # seconds between looks while a test holds the lock
SIGNAL = signal.SIGURG     # ignored by default: a stray one after release is harmless


def waits_in_kernel(st, pid=None):
    """True when /proc/locks shows process `pid` (default: this one) waiting
    for a flock on the file of os.stat result `st`."""
    pid = os.getpid() if pid is None else pid
    dev = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    try:
        with open("/proc/locks") as f:
            for line in f:
                fields = line.split()
                # "N: -> FLOCK  ADVISORY  WRITE pid maj:min:ino 0 EOF"
                if (len(fields) >= 7 and fields[1] == "->" and fields[2] == "FLOCK"
                        and fields[5] == str(pid) and fields[6] == dev):
                    return True
    except OSError:
        pass  # not Linux: no evidence
    return False


def polls_in_filelock(st, thread_id):
    """True when thread `thread_id` is inside filelock, trying to take the
    file of os.stat result `st`."""
    frame = sys._current_frames().get(thread_id)
    while frame is not None:
        if frame.f_globals.get("__name__", "").startswith("filelock"):
            target = getattr(frame.f_locals.get("self"), "lock_file", None)
            if isinstance(target, (str, os.PathLike)):
                try:
                    t = os.stat(target)
                except OSError:
                    t = None
                if t is not None and (t.st_dev, t.st_ino) == (st.st_dev, st.st_ino):
                    return True
        frame = frame.f_back
    return False


class Watch:
    """Started when a heavy test takes a local lock file, stopped when it
    releases it.  `say(text)` puts a line on the terminal."""

    def __init__(self, path, shown, say):
        self.st = os.stat(path)
        self.shown = shown
        self.say = say
        self.thread_id = threading.get_ident()
        self.fired = None        # the message, once the deadlock was seen
        self._stop = threading.Event()
        self._old_handler = None
        if threading.current_thread() is threading.main_thread():
            try:
                if signal.getsignal(SIGNAL) == signal.SIG_DFL:
                    self._old_handler = signal.signal(SIGNAL, self._on_signal)
            except (ValueError, OSError):
                pass  # no signals here: the message alone for a flock(2) wait
        self._thread = threading.Thread(target=self._run, name="heavylock-selfwait",
                                        daemon=True)
        self._thread.start()

    def stop(self):
        self._stop.set()
        self._thread.join()
        if self._old_handler is not None:
            signal.signal(SIGNAL, self._old_handler)
            self._old_handler = None

    def _message(self, how):
        return (f"SELF-DEADLOCK: this very process (pid {os.getpid()}) {how} {self.shown} "
                "through another handle (e.g. the old conftest's filelock/flock fixture) "
                "while heavylock holds it for this test, so that wait would never end. "
                "Remove the old locking code (docs/migrating.md, step 2), or point one of "
                "them at another file (--heavylock-path / HEAVYLOCK_PATH).")

    def _error(self):
        msg = self.fired

        class _SelfDeadlock(SelfDeadlock):  # raised by type: the message rides along
            def __init__(self, *args):
                SelfDeadlock.__init__(self, errno.EDEADLK, f"heavylock: {msg}")

        _SelfDeadlock.__name__ = _SelfDeadlock.__qualname__ = "SelfDeadlock"
        _SelfDeadlock.__module__ = "heavylock"  # what the user catches: heavylock.SelfDeadlock
        return _SelfDeadlock

    def _on_signal(self, signum, frame):
        if self.fired is not None:
            raise self._error()()

    def _run(self):
        while not self._stop.wait(CHECK_EVERY):
            if waits_in_kernel(self.st):
                self.fired = self._message("waits in flock(2) for")
                self.say(self.fired)
                if self._old_handler is not None:
                    signal.pthread_kill(self.thread_id, SIGNAL)  # interrupts the flock(2)
                return
            if polls_in_filelock(self.st, self.thread_id):
                self.fired = self._message("polls with filelock for")
                self.say(self.fired)
                ctypes.pythonapi.PyThreadState_SetAsyncExc(
                    ctypes.c_ulong(self.thread_id), ctypes.py_object(self._error()))
                return
