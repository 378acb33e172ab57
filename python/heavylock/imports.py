"""Heavy work at import time: test modules and conftests that a rule makes
heavy are imported under the lock, and each import is measured: how long it
took, how much it grew the process, and whether it loaded a model.

"Loaded a model" is something seen, never guessed from time or memory: a file
mapped during the import (``/proc/self/maps``) or left open (``/proc/self/fd``)
that lies in the model's directory (``LOCAL_MODEL_PATH``'s, or the lock's) or
is a ``.gguf``; or a heavy token in the module's import-time code.

A module that loaded no model needs no lock: that answer is kept in pytest's
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


class Probe:
    """What one import mapped or opened: before() just before it, after()
    just after; returns the model file it loaded, or None."""

    def __init__(self, dirs):
        self.dirs = dirs
        self._before = None

    def before(self):
        self._before = _mapped_files()

    def after(self):
        if self._before is None:
            return None
        now = _mapped_files() or set()
        for path in sorted((now - self._before) | _open_files()):
            if path.endswith(MODEL_SUFFIXES) or path.startswith(self.dirs):
                if not path.endswith(".lock"):  # the lock file itself is no model
                    return path
        return None


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
                and seen.get("model") is None)

    def save(self, events):
        cache = getattr(self.config, "cache", None)
        new = {}
        for e in events:
            if e.get("kind") == "import" and e.get("sha256") and e.get("seconds") is not None:
                seen = new.setdefault(e["nodeid"], {"sha256": e["sha256"], "model": None})
                seen["model"] = seen["model"] or e.get("model")  # any worker's sighting
        if cache is None or not new:
            return
        merged = dict(self.known)
        merged.update(new)
        cache.set(CACHE_KEY, merged)
