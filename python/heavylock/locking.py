"""The plugin's side of the lock: one handle per process, and the wait that
says who is in the way (on its own line, through pytest's terminal writer),
refuses to wait for itself, keeps pytest-timeout's clock stopped, and gives
up on a deadline."""

from __future__ import annotations

import contextlib
import os
import sys
import time

import pytest

from heavylock import backends

NOTICE_AFTER = 1.0     # first "waiting for" line after this many seconds
NOTICE_EVERY = 15.0    # then at most this often

# pytest-timeout's timer of a test: (its settings, monotonic time it was set).
TIMER_KEY = pytest.StashKey["tuple"]()


def ancestors(pid=None):
    """The pids of this process's parent chain, nearest first."""
    out = []
    pid = os.getppid() if pid is None else pid
    while pid > 1 and pid not in out and len(out) < 64:
        out.append(pid)
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                stat = f.read()
            pid = int(stat[stat.rindex(b")") + 2:].split()[1])  # field 4, after "comm"
        except (OSError, ValueError, IndexError):
            break  # not Linux, or gone: the direct parent is what we know
    return out


def note_timer(item, settings):
    """pytest-timeout armed a timer for `item` (called from its
    pytest_timeout_set_timer hook, before it does so)."""
    item.stash[TIMER_KEY] = (settings, time.monotonic())


@contextlib.contextmanager
def timer_stopped(item):
    """Keep the lock wait out of pytest-timeout's budget: cancel the test's
    timer through pytest-timeout's own hooks while waiting, and arm it again
    with what was left of it when the wait ends."""
    armed = item.stash.get(TIMER_KEY, None) if item is not None else None
    hook = item.config.hook if item is not None else None
    if armed is None or not hasattr(hook, "pytest_timeout_cancel_timer"):
        yield
        return
    settings, started = armed
    hook.pytest_timeout_cancel_timer(item=item)
    paused = time.monotonic()
    try:
        yield
    finally:
        now = time.monotonic()
        left = round(max(settings.timeout - (paused - started), 0.01), 2)  # as it reads
        hook.pytest_timeout_set_timer(item=item, settings=settings._replace(timeout=left))
        item.stash[TIMER_KEY] = (settings, started + (now - paused))


class LockClient:
    def __init__(self, config, settings):
        self.config = config
        self.settings = settings
        self.lock = None

    @property
    def path(self):
        return self.settings.path

    def handle(self):
        if self.lock is None:
            self.lock = backends.open_lock(self.path, self.settings.backend)
        return self.lock

    @property
    def held(self):
        return self.lock is not None and self.lock.held

    def release(self):
        self.lock.release()

    def close(self):
        if self.lock is not None:
            self.lock.close()

    def write_notice(self, text):
        """Say something now, on a line of its own, past pytest's capture (a
        test's setup is captured).  The controller's terminal writer ends
        its progress line first; an xdist worker has no terminal of its own,
        so it starts a fresh line on stderr."""
        capman = self.config.pluginmanager.getplugin("capturemanager")
        tr = self.config.pluginmanager.getplugin("terminalreporter")
        with capman.global_and_fixture_disabled() if capman else contextlib.nullcontext():
            if tr is not None and not hasattr(self.config, "workerinput"):
                tr.write_line(f"heavylock: {text}")
                tr.flush()
            else:
                sys.stderr.write(f"\nheavylock: {text}\n")
                sys.stderr.flush()

    def describe_holder(self):
        if backends._native is None:
            return "held by another process"
        try:
            return backends._native.describe_holder(self.path)
        except OSError:
            return "held by another process"

    def never_ends(self):
        """Why waiting would never end (the holder is this very process through
        another handle, or a process that waits for this one), or None."""
        if backends._native is None or self.held:
            return None
        try:
            st = backends._native.status(self.path)
        except OSError:
            return None
        pid = st.get("holder_pid") or 0
        if not st.get("held") or pid <= 0:
            return None
        fix = ("Remove the old locking code (the heavylock plugin serializes heavy tests "
               "itself), or point one of them at another file (--heavylock-path / "
               "HEAVYLOCK_PATH).")
        if pid == os.getpid():
            return (f"{self.path} is {self.describe_holder()}: that is this very process, "
                    "through another handle (an old conftest hook or fixture that takes "
                    "filelock/flock on the same file, e.g. in pytest_runtest_setup), so "
                    f"waiting for it would never end. {fix}")
        if pid in ancestors():
            return (f"{self.path} is {self.describe_holder()}: that is a parent of this "
                    f"process (pid {os.getpid()}), which waits for this run to end, so "
                    "waiting for it would never end. Run pytest outside the command that "
                    "holds the lock (e.g. not under `heavylock run` or `flock`), or point "
                    "one of them at another file (--heavylock-path / HEAVYLOCK_PATH).")
        return None

    def acquire(self, label, item=None):
        """Take the lock, saying who holds it while we wait.  Returns
        (wait_start, acquired) wall times.  `item`, the test that waits,
        has its pytest-timeout timer stopped meanwhile."""
        lk = self.handle()
        lk.set_label(label)
        wait_start = time.time()
        if lk.acquire(0):
            return wait_start, time.time()
        with timer_stopped(item):
            self._wait(lk)
        return wait_start, time.time()

    def _wait(self, lk):
        timeout = self.settings.timeout
        start = time.monotonic()
        next_notice = NOTICE_AFTER
        while True:
            why = self.never_ends()
            if why:
                pytest.fail(f"heavylock: {why}", pytrace=False)
            waited = time.monotonic() - start
            if waited >= next_notice:
                self.write_notice(f"waiting for {self.path}, {self.describe_holder()} "
                                  f"(waited {waited:.0f} s)")
                next_notice = waited + NOTICE_EVERY
            slice_ = next_notice - waited
            if timeout is not None:
                left = timeout - waited
                if left <= 0:
                    holder = self.describe_holder()
                    pytest.fail(f"heavylock: gave up after waiting {timeout:g} s for "
                                f"{self.path}, {holder} (--heavylock-timeout)", pytrace=False)
                slice_ = min(slice_, left)
            if lk.acquire(max(slice_, 0.01)):
                return
