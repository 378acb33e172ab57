"""The plugin's side of the lock: one handle per process, and the wait that
says who is in the way (past pytest's capture) and gives up on a deadline."""

from __future__ import annotations

import contextlib
import sys
import time

import pytest

from heavylock import backends

NOTICE_AFTER = 1.0     # first "waiting for" line after this many seconds
NOTICE_EVERY = 15.0    # then at most this often


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
        """Say something now, past pytest's capture (the test's setup is captured)."""
        capman = self.config.pluginmanager.getplugin("capturemanager")
        with capman.global_and_fixture_disabled() if capman else contextlib.nullcontext():
            sys.stderr.write(f"heavylock: {text}\n")
            sys.stderr.flush()

    def describe_holder(self):
        if backends._native is None:
            return "held by another process"
        try:
            return backends._native.describe_holder(self.path)
        except OSError:
            return "held by another process"

    def acquire(self, label):
        """Take the lock, saying who holds it while we wait.  Returns
        (wait_start, acquired) wall times."""
        lk = self.handle()
        lk.set_label(label)
        timeout = self.settings.timeout
        wait_start = time.time()
        start = time.monotonic()
        if lk.acquire(0):
            return wait_start, time.time()
        next_notice = NOTICE_AFTER
        while True:
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
                return wait_start, time.time()
