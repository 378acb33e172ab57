"""Lock backends, in the seed policy's order of preference.

``native``   libheavylock through the C extension: flock(2), crash-safe,
             holder records, woken at once on release.
``filelock`` the ``filelock`` package, when the extension cannot load.
``fcntl``    ``fcntl.flock`` directly, when neither is there.
``pidfile``  a PID file: NOT crash-safe, NOT safe across processes; only for
             platforms with none of the above, and it says so loudly.

All but ``pidfile`` take an exclusive flock(2) on the same file, so they
exclude each other (and util-linux ``flock(1)``).  ``HEAVYLOCK_BACKEND``
forces one.  Every backend offers the same small interface::

    lk = open_lock(path)           # or open_lock(path, "fcntl")
    lk.acquire(timeout)            # True, or False when busy / timed out
    lk.set_label("nodeid")         # shown by `heavylock status`
    lk.release(); lk.close()
"""

from __future__ import annotations

import errno
import os
import time
import warnings

try:
    from heavylock import _native
except ImportError:  # pragma: no cover - exercised by forcing a backend
    _native = None

BACKENDS = ("native", "filelock", "fcntl", "pidfile")
LOCK_NAME = ".llm_load.lock"


class PidfileWarning(UserWarning):
    """The PID-file backend is in use: the lock is not crash- or race-safe."""


def _open_flags() -> int:
    flags = os.O_RDWR | os.O_CREAT
    for name in ("O_NOFOLLOW", "O_CLOEXEC", "O_NOCTTY"):
        flags |= getattr(os, name, 0)
    return flags


def _check_path(path: str) -> None:
    """Refuse a symlink or non-regular file at the lock path; create parents."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        return
    import stat

    if stat.S_ISLNK(st.st_mode):
        raise OSError(errno.ELOOP, "lock path is a symbolic link (refused)", path)
    if not stat.S_ISREG(st.st_mode):
        raise OSError(errno.EINVAL, "lock path is not a regular file", path)


class NativeLock:
    name = "native"

    def __init__(self, path: str):
        self._lock = _native.Lock(path)
        self.path = path

    def acquire(self, timeout: float | None = None) -> bool:
        return self._lock.acquire(timeout)

    def release(self) -> None:
        self._lock.release()

    def set_label(self, label: str | None) -> None:
        self._lock.set_label(label)

    @property
    def held(self) -> bool:
        return self._lock.held

    def close(self) -> None:
        self._lock.close()


class FilelockLock:
    name = "filelock"

    def __init__(self, path: str):
        import filelock

        _check_path(path)
        self.path = path
        self._lock = filelock.FileLock(path)
        self._timeout_exc = filelock.Timeout

    def acquire(self, timeout: float | None = None) -> bool:
        try:
            self._lock.acquire(timeout=-1 if timeout is None or timeout < 0 else timeout,
                               poll_interval=0.005)
        except self._timeout_exc:
            return False
        return True

    def release(self) -> None:
        self._lock.release()

    def set_label(self, label: str | None) -> None:
        pass  # no holder record: status still names the pid from /proc/locks

    @property
    def held(self) -> bool:
        return self._lock.is_locked

    def close(self) -> None:
        if self.held:
            self._lock.release(force=True)


class FcntlLock:
    """``fcntl.flock`` with bounded backoff polling when there is a deadline."""

    name = "fcntl"

    def __init__(self, path: str):
        import fcntl

        _check_path(path)
        self._fcntl = fcntl
        self.path = path
        self._fd: int | None = None

    def acquire(self, timeout: float | None = None) -> bool:
        fcntl = self._fcntl
        if self._fd is not None:
            raise OSError(errno.EDEADLK, "this handle already holds the lock", self.path)
        _check_path(self.path)
        fd = os.open(self.path, _open_flags(), 0o666)
        try:
            if timeout is None or timeout < 0:
                fcntl.flock(fd, fcntl.LOCK_EX)
            else:
                deadline = time.monotonic() + timeout
                delay = 0.001
                while True:
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        break
                    except BlockingIOError:
                        left = deadline - time.monotonic()
                        if left <= 0:
                            os.close(fd)
                            return False
                        time.sleep(min(delay, left))
                        delay = min(delay * 2, 0.05)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return True

    def release(self) -> None:
        if self._fd is None:
            raise RuntimeError("release of a lock that is not held")
        fd, self._fd = self._fd, None
        self._fcntl.flock(fd, self._fcntl.LOCK_UN)
        os.close(fd)

    def set_label(self, label: str | None) -> None:
        pass

    @property
    def held(self) -> bool:
        return self._fd is not None

    def close(self) -> None:
        if self._fd is not None:
            self.release()


class PidfileLock:
    """Create-exclusive PID file.  Not crash-safe: a holder killed hard leaves
    the file behind (it is taken over once its pid is gone), and two
    processes can both decide it is stale.  Last resort only."""

    name = "pidfile"

    def __init__(self, path: str):
        warnings.warn(
            f"heavylock: using the PID-file lock at {path}: it is NOT crash-safe and NOT "
            "safe across processes; build the native extension or install filelock",
            PidfileWarning,
            stacklevel=2,
        )
        self.path = path + ".pid"
        self._held = False

    def _try(self) -> bool:
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0))
        except FileExistsError:
            try:
                with open(self.path) as f:
                    pid = int(f.read().strip() or 0)
                os.kill(pid, 0)
            except (ValueError, ProcessLookupError):
                try:  # stale: its writer is gone
                    os.unlink(self.path)
                except FileNotFoundError:
                    pass
            except (OSError, PermissionError):
                pass
            return False
        with os.fdopen(fd, "w") as f:
            f.write(f"{os.getpid()}\n")
        self._held = True
        return True

    def acquire(self, timeout: float | None = None) -> bool:
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        deadline = None if timeout is None or timeout < 0 else time.monotonic() + timeout
        delay = 0.001
        while not self._try():
            if deadline is not None and time.monotonic() >= deadline:
                return False
            time.sleep(delay)
            delay = min(delay * 2, 0.05)
        return True

    def release(self) -> None:
        if not self._held:
            raise RuntimeError("release of a lock that is not held")
        self._held = False
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass

    def set_label(self, label: str | None) -> None:
        pass

    @property
    def held(self) -> bool:
        return self._held

    def close(self) -> None:
        if self._held:
            self.release()


_CLASSES = {"native": NativeLock, "filelock": FilelockLock, "fcntl": FcntlLock,
            "pidfile": PidfileLock}


def available_backend() -> str:
    """The most preferred backend that works here."""
    if _native is not None:
        return "native"
    try:
        import filelock  # noqa: F401

        return "filelock"
    except ImportError:
        pass
    try:
        import fcntl  # noqa: F401

        return "fcntl"
    except ImportError:
        return "pidfile"


def choose_backend(value: str | None, source: str = "HEAVYLOCK_BACKEND") -> str:
    """Validate a requested backend name (None/"" = the best available)."""
    if not value:
        return available_backend()
    name = value.strip().lower()
    if name not in BACKENDS:
        raise ValueError(f"{source}={value!r} is not a lock backend; "
                         f"expected one of {', '.join(BACKENDS)}")
    if name == "native" and _native is None:
        raise ValueError(f"{source}={value!r}: the native extension heavylock._native "
                         "could not be imported")
    return name


def open_lock(path: str, backend: str | None = None):
    """Open a lock handle on ``path`` with ``backend`` (default: the
    ``HEAVYLOCK_BACKEND`` variable, else the best available)."""
    if backend is None:
        backend = choose_backend(os.environ.get("HEAVYLOCK_BACKEND"))
    return _CLASSES[backend](os.fspath(path))


def resolve_path(root: str | None = None) -> tuple[str, str, str]:
    """Where the lock lives: ``(path, source, why)``; ValueError names a bad
    variable.  The native core decides; this Python twin serves only when
    the extension cannot load."""
    if _native is not None:
        return _native.resolve_path(None if root is None else os.fspath(root))
    v = os.environ.get("HEAVYLOCK_PATH")
    if v is not None:
        if not v:
            raise ValueError("HEAVYLOCK_PATH is set but empty; unset it or name a lock file")
        if os.path.isdir(v):
            raise ValueError(f"HEAVYLOCK_PATH='{v}' is a directory; name the lock file "
                             f"itself, e.g. {v}/{LOCK_NAME}")
        return os.path.abspath(v), "HEAVYLOCK_PATH", f"HEAVYLOCK_PATH is set to '{v}'"
    v = os.environ.get("LOCAL_MODEL_PATH")
    if v is not None:
        if not v:
            raise ValueError("LOCAL_MODEL_PATH is set but empty; unset it or point it at "
                             "the model file")
        if not os.path.exists(v):
            raise ValueError(f"LOCAL_MODEL_PATH='{v}' does not exist (a relative path is "
                             "resolved against the current directory)")
        if os.path.isdir(v):
            raise ValueError(f"LOCAL_MODEL_PATH='{v}' is a directory; it must name the "
                             "model file (e.g. a .gguf)")
        return (os.path.join(os.path.dirname(os.path.abspath(v)), LOCK_NAME), "LOCAL_MODEL_PATH",
                f"LOCAL_MODEL_PATH is set to '{v}': the lock lives next to the model")
    base = root or "."
    return (os.path.join(os.path.abspath(os.path.join(base, "models")), LOCK_NAME), "default",
            f"neither HEAVYLOCK_PATH nor LOCAL_MODEL_PATH is set: models/{LOCK_NAME} "
            f"under '{base}'")


def status(path: str) -> dict:
    """Who holds the lock at ``path`` and who waits (see ``heavylock status``)."""
    if _native is None:
        raise RuntimeError("status needs the native extension heavylock._native")
    return _native.status(os.fspath(path))
