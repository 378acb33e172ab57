"""Heavy work at import time: test modules and conftests that a rule makes
heavy are imported under the lock, and each import is measured: how long it
took, how much it grew the process, and whether it loaded a model.

"Loaded a model" is something seen, never guessed from time or memory: a file
mapped during the import (``/proc/self/maps``) or left open (``/proc/self/fd``)
that lies in the model's directory (``LOCAL_MODEL_PATH``'s, or the lock's) or
is a ``.gguf``; or a heavy token in the module's import-time code.

A module that loaded no model (and read less than 32 MiB: it may have read
one without mapping it) needs no lock: that answer is kept in pytest's
cache (``heavylock/imports``) per file and content hash, as durations and
weights are, and the next runs import it freely until the file changes.  (A
helper module it imports is not hashed: a model load added there is seen
again only once the test file changes, or with ``--cache-clear``.)
"""

from __future__ import annotations

import hashlib
import os

CACHE_KEY = "heavylock/imports"
MODEL_SUFFIXES = (".gguf",)


def content_hash(path):
    """sha256 of the file's bytes, or None when it cannot be read."""
    try:
        with open(path, "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()
    except OSError:
        return None


def _mapped_files():
    """Paths of the files mapped into this process, or None without /proc."""
    try:
        with open("/proc/self/maps", "rb") as f:
            data = f.read()
    except OSError:
        return None
    out = set()
    for line in data.splitlines():
        parts = line.split(None, 5)
        if len(parts) == 6 and parts[5].startswith(b"/"):
            out.add(os.fsdecode(parts[5]))
    return out


def _open_files():
    out = set()
    try:
        fds = os.listdir("/proc/self/fd")
    except OSError:
        return out
    for fd in fds:
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("/"):
            out.add(target)
    return out


def model_dirs(settings):
    """The directories whose files count as models: LOCAL_MODEL_PATH's and
    the lock file's (<rootdir>/models by default)."""
    dirs = set()
    model = os.environ.get("LOCAL_MODEL_PATH")
    if model:
        dirs.add(os.path.dirname(os.path.abspath(model)))
    if not settings.remote:
        dirs.add(os.path.dirname(settings.path))
    return tuple(d.rstrip("/") + "/" for d in dirs)


READ_LIMIT = 32 * 2**20  # an import that read this much may have read a model


def _bytes_read():
    """Bytes this process has read so far (files, pipes, sockets), or None."""
    try:
        with open("/proc/self/io", "rb") as f:
            for line in f:
                if line.startswith(b"rchar:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


class Probe:
    """What one import mapped or opened: before() just before it, after()
    just after; returns the model file it loaded, or None."""

    def __init__(self, dirs, lock_path):
        self.dirs = dirs
        self.lock_path = lock_path  # the lock and its slot table are no model
        self._before = None
        self._read = None
        self.read = None     # bytes the import read, once after() ran

    def before(self):
        mapped = _mapped_files()
        self._before = None if mapped is None else mapped | _open_files()
        self._read = _bytes_read()

    @property
    def seen(self):
        """Whether this system lets an import be watched (Linux /proc)."""
        return self._before is not None and self._read is not None

    def after(self):
        if not self.seen:
            return None  # nothing seen, so nothing is said (and nothing cached)
        read = _bytes_read()
        self.read = read - self._read if read is not None else None
        new = ((_mapped_files() or set()) | _open_files()) - self._before
        for path in sorted(new):
            if ((path.endswith(MODEL_SUFFIXES) or path.startswith(self.dirs))
                    and not path.startswith(self.lock_path)):
                return path
        return None


def light_import(event):
    """Whether a measured import may go without the lock next time: it was
    watched, mapped or kept open no model, read too little to have read one,
    and names no token at import time."""
    return (event.get("probed") is True and not event.get("model")
            and (event.get("read_bytes") or 0) < READ_LIMIT
            and not (event.get("rule") or "").startswith("token "))


class ImportVerdicts:
    """The measured answer per module: {rootdir-relative path: {"sha256",
    "model"}}, read from the cache on first use, written by the process that
    ends the run."""

    def __init__(self, config):
        self.config = config
        self._known = None

    @property
    def known(self):
        if self._known is None:
            cache = getattr(self.config, "cache", None)
            data = cache.get(CACHE_KEY, {}) if cache is not None else {}
            self._known = data if isinstance(data, dict) else {}
        return self._known

    def light(self, rel, sha):
        """True when an earlier run imported this very content and saw no model."""
        seen = self.known.get(rel)
        return (sha is not None and isinstance(seen, dict) and seen.get("sha256") == sha
                and seen.get("light") is True)

    def save(self, events):
        cache = getattr(self.config, "cache", None)
        new = {}
        for e in events:
            if e.get("kind") == "import" and e.get("sha256") and e.get("seconds") is not None:
                seen = new.setdefault(e["nodeid"], {"sha256": e["sha256"], "light": True})
                seen["light"] = seen["light"] and light_import(e)  # every worker's sighting
        if cache is None or not new:
            return
        merged = dict(self.known)
        merged.update(new)
        cache.set(CACHE_KEY, merged)
