"""The plugin's side of the lock: one handle per process, and the wait that
says who is in the way (on its own line, through pytest's terminal writer),
refuses to wait for itself, keeps pytest-timeout's clock stopped, and gives
up on a deadline."""

from __future__ import annotations

import contextlib
import inspect
import os
import sys
import threading
import time

import pytest

from heavylock import backends, selfwait

NOTICE_AFTER = 1.0     # first "waiting for" line after this many seconds
NOTICE_EVERY = 15.0    # then at most this often

CHECK_EVERY = 1.0      # a remote lock's holder asks the server this often
LOST_FLAG = 2          # _native.FLAG_LOST, for an extension that does not name it

# pytest-timeout's timer of a test: (its settings, monotonic time it was set).
TIMER_KEY = pytest.StashKey["tuple"]()


def native_attr(lk, name):
    """An attribute of the lock's C handle (the backend wrapper's own when it
    forwards it), or None for the backends without one."""
    v = getattr(lk, name, None)
    if v is None:
        v = getattr(getattr(lk, "_lock", None), name, None)
    return v


def _fmt_bytes(n):
    from heavylock.settings import size_format

    return size_format(n)


def describe_status(st):
    """'held by ...' from a status dict with holders (the slots and pg kinds),
    or None when it names none."""
    holders = st.get("holders") or []
    if not holders or st.get("kind") not in ("slots", "pg"):
        return None  # the exclusive lock: describe_holder names its command line
    parts = []
    for h in holders[:4]:
        w = h.get("weight") or 0
        what = f"pid {h.get('pid')}"
        if h.get("label"):
            what += f" ({h['label']})"
        if w:
            what += f", {_fmt_bytes(w)} {h.get('weight_source') or ''}".rstrip()
        parts.append(what)
    more = f" and {len(holders) - 4} more" if len(holders) > 4 else ""
    free = st.get("free_bytes")
    tail = f"; {_fmt_bytes(free)} free" if free is not None else ""
    return backends.redact(f"held by {'; '.join(parts)}{more}{tail}")  # labels may hold URLs


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
        self.lost = None          # why the held lock was lost (LockLost), or None
        self.why_not = None       # why the last acquire failed: "timed out" or "error"
        self._watch = None        # (stop event, thread) checking a remote lock
        self._selfwait = None     # selfwait.Watch over a held lock file

    @property
    def path(self):
        return self.settings.path

    @property
    def shown(self):
        """The lock's target for messages: passwords masked (hl_redact)."""
        return self.settings.shown_path

    def handle(self):
        if self.lock is None:
            s = self.settings
            if s.slots == 1 and not s.budget:
                # the seed's exclusive lock, exactly as before
                self.lock = backends.open_lock(self.path, s.backend)
            else:
                try:
                    self.lock = backends.open_lock(self.path, s.backend, slots=s.slots,
                                                   budget=s.budget)
                except ValueError as exc:  # slots need the native backend
                    raise pytest.UsageError(f"{s.slots_source}: {exc}") from None
        return self.lock

    @property
    def held(self):
        return self.lock is not None and self.lock.held

    def release(self):
        """Release; returns why the lock did not protect the work it held
        (lost to the server, or the file deleted/replaced while held), or None."""
        self._stop_watch()
        lost, self.lost = self.lost, None
        try:
            self.lock.release()
        except OSError as exc:  # LockLost from the release of a lost remote lock
            lost = lost or " ".join(str(exc.strerror or exc).split())
        flags = native_attr(self.lock, "flags") or 0
        if not lost and flags & LOST_FLAG:
            lost = (f"{self.shown} was deleted or replaced while it was held: the lock did "
                    "not exclude processes that opened the new file")
        return lost

    # -- a remote lock's holder learns within a second that it lost it

    def _start_watch(self):
        if not self.settings.remote:
            # this process waiting for the file through another handle (an
            # old conftest fixture) would hang silently: selfwait says so
            try:
                self._selfwait = selfwait.Watch(self.path, self.shown,
                                                lambda text: self.write_notice(text, stderr=True))
            except OSError:
                pass  # the file is gone already: release reports it (LOST_FLAG)
            return
        check = native_attr(self.lock, "check")
        if check is None or native_attr(self.lock, "kind") != "pg":
            return
        stop = threading.Event()

        def run():
            while not stop.wait(CHECK_EVERY):
                try:
                    check()
                except OSError as exc:  # heavylock.LockLost (an OSError)
                    if stop.is_set():
                        return
                    # one line: libpq's messages carry newlines and tabs
                    self.lost = " ".join(str(exc.strerror or exc).split()) or \
                        "the server ended the session"
                    self.write_notice(f"LOST THE LOCK {self.shown}: {self.lost}; the heavy "
                                      "test running now is no longer protected and will "
                                      "fail")
                    return

        t = threading.Thread(target=run, name="heavylock-check", daemon=True)
        t.start()
        self._watch = (stop, t)

    def _stop_watch(self):
        if self._selfwait is not None:
            self._selfwait.stop()
            self._selfwait = None
        if self._watch is not None:
            stop, t = self._watch
            stop.set()
            t.join()
            self._watch = None

    def close(self):
        self._stop_watch()
        if self.lock is not None:
            self.lock.close()

    def write_notice(self, text, stderr=False):
        """Say something now, on a line of its own, past pytest's capture (a
        test's setup is captured).  The controller's terminal writer ends
        its progress line first; an xdist worker has no terminal of its own
        (nor has an error, `stderr`), so it starts a fresh line on stderr."""
        capman = self.config.pluginmanager.getplugin("capturemanager")
        tr = self.config.pluginmanager.getplugin("terminalreporter")
        with capman.global_and_fixture_disabled() if capman else contextlib.nullcontext():
            if tr is not None and not stderr and not hasattr(self.config, "workerinput"):
                tr.write_line(f"heavylock: {text}")
                tr.flush()
            else:
                sys.stderr.write(f"\nheavylock: {text}\n")
                sys.stderr.flush()

    def describe_holder(self, st=None):
        # the slot table and the server know labels and weights; for the
        # exclusive file lock the holder's command line says more
        if st is not None and (self.settings.slots != 1 or self.settings.remote):
            said = describe_status(st)
            if said:
                return said
        if backends._native is None:
            return "held by another process"
        try:
            return backends._native.describe_holder(self.path)
        except OSError:
            return "held by another process"

    def never_ends(self, native_said=False):
        """Why waiting would never end (the holder is this very process
        through another handle, or a parent that waits for this one), or
        None.  The native backend decides in C (SelfDeadlock: a parent counts
        only while it waits for its children), and `native_said` asks for the
        words only; the other backends decide here from the kernel's lock
        table."""
        if backends._native is None or self.held:
            return None
        try:
            st = backends._native.status(self.path)
        except OSError:
            return None
        pid = st.get("holder_pid") or 0
        if not native_said and (not st.get("held") or pid <= 0):
            return None
        fix = ("Remove the old locking code (the heavylock plugin serializes heavy tests "
               "itself), or point one of them at another file (--heavylock-path / "
               "HEAVYLOCK_PATH).")
        if pid == os.getpid():
            return (f"{self.shown} is {self.describe_holder()}: that is this very process, "
                    "through another handle (an old conftest hook or fixture that takes "
                    "filelock/flock on the same file, e.g. in pytest_runtest_setup), so "
                    f"waiting for it would never end. {fix}")
        if native_said or pid in ancestors():
            return (f"{self.shown} is {self.describe_holder()}: that is a parent of this "
                    f"process (pid {os.getpid()}), which waits for this run to end, so "
                    "waiting for it would never end. Run pytest outside the command that "
                    "holds the lock (e.g. not under `heavylock run` or `flock`), or point "
                    "one of them at another file (--heavylock-path / HEAVYLOCK_PATH).")
        return None

    def acquire(self, label, item=None, weight=0, source="unknown"):
        """Take the lock, saying who holds it while we wait.  Returns
        (wait_start, acquired) wall times.  `item`, the test that waits,
        has its pytest-timeout timer stopped meanwhile.  `weight` (bytes,
        0 unknown) is what a lock with slots admits it by."""
        self.why_not = "error"
        try:
            lk = self.handle()
            lk.set_label(label)
            s = self.settings
            if s.slots != 1:
                # N slots on a lock server without a budget count holders only:
                # a weight there would ask for memory no one can read
                counted = s.remote and not s.budget
                lk.set_weight(0 if counted else int(weight), source=source)
            self.lost = None
            wait_start = time.time()
            if lk.acquire(0):
                self._start_watch()
                return wait_start, time.time()
            with timer_stopped(item):
                if "on_wait" in _params(lk.acquire):
                    self._wait_native(lk)
                else:
                    self._wait(lk)
        except OSError as exc:
            # checked at start-up, so this broke during the run (the folder
            # removed, the server gone): one line, not a traceback
            what = " ".join(str(exc.strerror or exc).split())
            pytest.fail(f"heavylock: cannot take the lock {self.shown} (from "
                        f"{self.settings.path_source}): {what}", pytrace=False)
        self._start_watch()
        return wait_start, time.time()

    def _give_up(self, timeout, st=None):
        self.why_not = "timed out"
        pytest.fail(f"heavylock: gave up after waiting {timeout:g} s for {self.shown}, "
                    f"{self.describe_holder(st)} (--heavylock-timeout)", pytrace=False)

    def _wait_native(self, lk):
        """The C library's one wait loop: it sleeps in the kernel (or the
        server), and calls back for the notices."""
        last = {}

        def on_wait(st, waited):
            last["st"] = st
            self.write_notice(f"waiting for {self.shown}, {self.describe_holder(st)} "
                              f"(waited {waited:.0f} s)")

        timeout = self.settings.timeout
        try:
            got = lk.acquire(timeout, on_wait=on_wait, first=NOTICE_AFTER, every=NOTICE_EVERY)
        except OSError as exc:
            if exc.__class__.__name__ == "SelfDeadlock":
                why = self.never_ends(native_said=True) or str(exc)
                pytest.fail(f"heavylock: {why}", pytrace=False)
            raise
        if not got:
            self._give_up(timeout, last.get("st"))

    def _wait(self, lk):
        """The other backends (filelock, fcntl, pidfile): slices in Python."""
        timeout = self.settings.timeout
        start = time.monotonic()
        next_notice = NOTICE_AFTER
        while True:
            why = self.never_ends()
            if why:
                pytest.fail(f"heavylock: {why}", pytrace=False)
            waited = time.monotonic() - start
            if waited >= next_notice:
                self.write_notice(f"waiting for {self.shown}, {self.describe_holder()} "
                                  f"(waited {waited:.0f} s)")
                next_notice = waited + NOTICE_EVERY
            slice_ = next_notice - waited
            if timeout is not None:
                left = timeout - waited
                if left <= 0:
                    self._give_up(timeout)
                slice_ = min(slice_, left)
            if lk.acquire(max(slice_, 0.01)):
                return


def _params(fn):
    try:
        return inspect.signature(fn).parameters
    except (TypeError, ValueError):  # a builtin without a signature
        return {}
