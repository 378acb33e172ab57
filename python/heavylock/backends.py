"""Lock backends, in the seed policy's order of preference.

``native``   libheavylock through the C extension: flock(2), crash-safe,
             holder records, woken at once on release.
``filelock`` the ``filelock`` package, when the extension cannot load.
``fcntl``    ``fcntl.flock`` directly, when neither is there.
``pidfile``  a PID file: NOT crash-safe, NOT safe across processes; only for
             platforms with none of the above, and it says so loudly.

All but ``pidfile`` take an exclusive flock(2) on the same file, so they
exclude each other (and util-linux ``flock(1)``).  ``HEAVYLOCK_BACKEND``
forces one.  Every backend is a :class:`BaseLock`::

    lk = open_lock(path)           # or open_lock(path, "fcntl", timeout=30)
    lk.acquire(timeout)            # True, or False when busy / timed out
    with lk: ...                   # waits lk.timeout (None: forever), else Timeout
    with lk.lock(5): ...           # waits 5 s, else Timeout(path, holder)
    lk.set_label("nodeid")         # shown by `heavylock status`
    lk.release(); lk.close()

Two ways to wait, on purpose: ``acquire(timeout) -> bool`` is the primitive
(the pytest plugin waits in slices with it and says who is in the way);
``lock(timeout)`` and ``with`` raise :class:`Timeout`, as filelock users
expect.  A handle is one hold of the lock: ``acquire`` on a handle that
already holds it raises ``OSError(EDEADLK)``; to queue for the lock from
several threads, open one handle per thread.
"""

from __future__ import annotations

import errno
import os
import re
import stat
import time
import warnings
import weakref
from types import ModuleType, TracebackType
from typing import Any, Callable, ClassVar, Dict, Optional, Tuple, Type, TypeVar, Union

try:
    import heavylock._native as _native_mod
except ImportError as exc:  # no compiler at install time, or a broken build
    _native: Optional[ModuleType] = None
    _NATIVE_ERROR: Optional[str] = str(exc)
else:
    _native = _native_mod
    _NATIVE_ERROR = None

BACKENDS = ("native", "filelock", "fcntl", "pidfile")
LOCK_NAME = ".llm_load.lock"

PathArg = Union[str, "os.PathLike[str]"]
_L = TypeVar("_L", bound="BaseLock")


class PidfileWarning(UserWarning):
    """The PID-file backend is in use: the lock is not crash- or race-safe."""


class FallbackWarning(UserWarning):
    """The native extension could not be loaded; a pure-Python backend serves."""


class SelfDeadlock(OSError):
    """Waiting would never end: this handle already holds the lock, or this
    process (or its parent) holds it through another descriptor (a
    conftest's filelock, ``flock L pytest``).  ``errno`` is EDEADLK."""


class LockLost(OSError):
    """The lock was lost while held or waited for: a PostgreSQL lock's
    session ended (server restart, ``pg_terminate_backend``, the network
    gave up) and the server released it.  Stop the protected work."""


#: The signature of ``on_wait``: (status dict, seconds waited) -> stop?
OnWait = Callable[[Dict[str, Any], float], Optional[bool]]

_URL = re.compile(r"^[A-Za-z0-9+.-]+://")


def target_kind(target: str) -> str:
    """What ``target`` names: ``"file"``, ``"pg"`` (a PostgreSQL URL), or
    ``"unknown"`` (a URL of no known lock server).  The C core's one rule
    (hl_target_kind); a pattern of the same rule only when the extension
    cannot load (then no URL works anyway)."""
    if _native is not None:
        return _native.target_kind(target)
    if not _URL.match(target) or len(target.split("://", 1)[0]) < 2:
        return "file"
    return "pg" if target.startswith(("postgresql://", "postgres://")) else "unknown"


def check_target(target: str, source: str) -> str:
    """``target_kind``, with a URL of an unknown scheme a ValueError naming
    ``source``, the value and the supported schemes."""
    kind = target_kind(target)
    if kind == "unknown":
        raise ValueError(f"{source}={_shown(target)!r} is a URL of no known lock server; "
                         f"supported: {URL_SCHEMES}")
    return kind


#: The lock servers' URL schemes (heavylock.h: HL_TARGET_SCHEMES).
URL_SCHEMES = "postgresql://, postgres://"


def is_url(target: str) -> bool:
    """Is ``target`` a URL (``postgresql://...``), not a lock file path?"""
    return target_kind(target) != "file"


def _needs_native(what: str) -> ValueError:
    reason = (f"it could not be imported ({_NATIVE_ERROR})" if _native is None
              else "choose the 'native' backend")
    return ValueError(f"{what} needs the native extension heavylock._native: {reason}")


class Timeout(TimeoutError):
    """The lock at :attr:`path` was not acquired in time.

    :attr:`holder` says who holds it ("held by pid 4242 (tests/test_chat.py::
    test_reply) for 12 s"), :attr:`timeout` how long we waited (0: one try).
    """

    def __init__(self, path: str, holder: str, timeout: Optional[float]) -> None:
        waited = "one try" if not timeout else f"waiting {timeout:g} s"
        # Kept masked: the exception travels (logs, xdist's pickles, reports).
        path, holder = _shown(path), _shown(holder)
        # and printable: a path may hold ESC or a newline (the message is
        # printed to terminals); .path stays the path
        self.message = f"could not take the lock {printable(path)} after {waited}: {holder}"
        super().__init__(errno.ETIMEDOUT, self.message)
        self.path = path
        self.holder = holder
        self.timeout = timeout

    def __str__(self) -> str:
        return self.message

    def __reduce__(self) -> Tuple[Any, ...]:  # picklable (xdist sends errors across)
        return (type(self), (self.path, self.holder, self.timeout))


def _proc_locks_holder(path: str) -> Optional[int]:
    """The pid holding a flock on `path` per /proc/locks (Linux), else None."""
    try:
        st = os.stat(path)
        with open("/proc/locks") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    want = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    for line in lines:
        parts = line.split()
        # "1: FLOCK  ADVISORY  WRITE 4242 08:01:1234 0 EOF"; waiters start with "->"
        if len(parts) >= 6 and parts[1] == "FLOCK" and parts[5] == want:
            try:
                return int(parts[4])
            except ValueError:
                return None
    return None


def describe_holder(path: PathArg) -> str:
    """Who holds the lock at ``path``, in one line for people."""
    p = os.fspath(path)
    if _native is not None:
        try:
            return str(_native.describe_holder(p))
        except (OSError, ValueError):
            pass
    pid = _proc_locks_holder(p)
    if pid is None:
        return "held by another process"
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmd = f.read().replace(b"\0", b" ").strip()
        shown = "".join(c if c.isprintable() else "?"
                        for c in cmd.decode("utf-8", "replace"))[:200]
        return f"held by pid {pid} ({shown})" if shown else f"held by pid {pid}"
    except OSError:
        return f"held by pid {pid}"


def _open_flags() -> int:
    flags = os.O_RDWR | os.O_CREAT
    for name in ("O_NOFOLLOW", "O_CLOEXEC", "O_NOCTTY"):
        flags |= getattr(os, name, 0)
    return flags


def _check_path(path: str) -> None:
    """Refuse a symlink or non-regular file at the lock path; create parents."""
    if is_url(path):  # never a directory named "postgresql:" on disk
        raise _needs_native(f"the lock server URL {_shown(path)}")
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        return
    if stat.S_ISLNK(st.st_mode):
        raise OSError(errno.ELOOP, "lock path is a symbolic link (refused)", path)
    if not stat.S_ISREG(st.st_mode):
        raise OSError(errno.EINVAL, "lock path is not a regular file", path)


def _shown(target: str) -> str:
    """Text for messages with every password masked: the C core's one
    redaction (hl_redact); a pattern for URL user info only when the
    extension cannot load."""
    if _native is not None:
        return _native.redact(target)
    return re.sub(r"([A-Za-z0-9+.-]+://[^/@:\s\"']*:)[^/\s\"']*@", r"\1***@", target)


redact = _shown


def printable(text: str) -> str:
    """Text for a terminal, as the CLI shows it: control characters (C0,
    DEL, C1) and bytes that were not UTF-8 (os.fsdecode's surrogate escapes)
    as \\xHH, never passed through."""
    out = []
    for c in text:
        o = ord(c)
        if 0xDC80 <= o <= 0xDCFF:  # a byte that was not UTF-8
            out.append(f"\\x{o - 0xDC00:02x}")
        elif o < 0x20 or o == 0x7F or 0x80 <= o < 0xA0:
            out.append("".join(f"\\x{b:02x}" for b in c.encode()))
        else:
            out.append(c)
    return "".join(out)


def _already_held(path: str) -> OSError:
    return SelfDeadlock(errno.EDEADLK, "this handle already holds the lock", path)


class _Default:
    """Marker: "use the handle's own timeout"."""


_DEFAULT: Any = _Default()


class Held:
    """What :meth:`BaseLock.lock` returns: the lock, held; leaving a ``with``
    block on it releases."""

    def __init__(self, lock: BaseLock) -> None:
        self.lock = lock

    def __enter__(self) -> BaseLock:
        return self.lock

    def __exit__(self, et: Optional[Type[BaseException]], ev: Optional[BaseException],
                 tb: Optional[TracebackType]) -> None:
        if self.lock.held:
            self.lock.release()


class BaseLock:
    """One handle on the lock file at :attr:`path` (see the module doc)."""

    name: ClassVar[str] = "base"
    path: str
    #: How long ``with lock:`` and ``lock()`` wait: None forever, 0 one try.
    timeout: Optional[float]

    def __init__(self, path: str, timeout: Optional[float] = None) -> None:
        self.path = path
        self.timeout = timeout
        self._closed = False

    def _check_open(self) -> None:
        # After close() a handle is done with, on every backend as on the
        # native one: a new acquire must not quietly lock again.
        if self._closed:
            raise ValueError("lock is closed")

    def acquire(self, timeout: Optional[float] = None) -> bool:
        """Take the lock: None or negative waits as long as it takes, 0 tries
        once, >0 waits that many seconds.  False when busy or out of time."""
        raise NotImplementedError

    def release(self) -> None:
        """Let the lock go (RuntimeError when this handle does not hold it)."""
        raise NotImplementedError

    def set_label(self, label: Optional[str]) -> None:
        """Label shown by ``heavylock status`` (native backend only)."""

    def set_weight(self, nbytes: int, source: str = "declared") -> None:
        """Expected peak memory in bytes (0 unknown) and where the number came
        from ("declared", "measured", "estimated"); it matters only with
        slots != 1 (native backend), an exclusive lock ignores it."""

    def check(self) -> None:
        """Raise :class:`LockLost` when the held lock was lost (a remote
        lock's session ended); file locks cannot be lost."""
        if not self.held:
            raise RuntimeError("the lock is not held by this handle")

    @property
    def kind(self) -> str:
        """What serves the handle: "flock", "slots", "pg"."""
        return "flock" if self.name in ("native", "filelock", "fcntl") else self.name

    @property
    def held(self) -> bool:
        """True while this handle holds the lock."""
        raise NotImplementedError

    def close(self) -> None:
        """Release if held; the handle is not used again."""
        raise NotImplementedError

    def lock(self, timeout: Optional[float] = _DEFAULT) -> Held:
        """Take the lock or raise :class:`Timeout` naming the holder.
        ``timeout`` defaults to :attr:`timeout`.  ``with lk.lock(5): ...``"""
        t = self.timeout if timeout is _DEFAULT else timeout
        if not self.acquire(t):
            raise Timeout(self.path, describe_holder(self.path), t)
        return Held(self)

    def __enter__(self: _L) -> _L:
        self.lock()
        return self

    def __exit__(self, et: Optional[Type[BaseException]], ev: Optional[BaseException],
                 tb: Optional[TracebackType]) -> None:
        if self.held:
            self.release()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {_shown(self.path)!r} {'held' if self.held else 'free'}>"


class NativeLock(BaseLock):
    name = "native"

    def __init__(self, path: str, timeout: Optional[float] = None, *, slots: int = 1,
                 budget: int = 0) -> None:
        if _native is None:
            raise RuntimeError(f"the native extension heavylock._native could not be "
                               f"imported: {_NATIVE_ERROR}")
        super().__init__(path, timeout)
        # The C handle releases in its deallocator, so a dropped handle
        # never keeps the lock.
        self._lock = _native.Lock(path)
        if slots != 1:
            self._lock.set_slots(slots)
        if budget:
            self._lock.set_budget(budget)

    def acquire(self, timeout: Optional[float] = None, *, on_wait: Optional[OnWait] = None,
                first: float = 1.0, every: float = 15.0) -> bool:
        """As :meth:`BaseLock.acquire`; ``on_wait(status, waited)`` is called
        while waiting (first after ``first`` s, then every ``every`` s): a
        true result ends the wait (False), an exception propagates."""
        return bool(self._lock.acquire(timeout, on_wait=on_wait, first=first, every=every))

    def set_weight(self, nbytes: int, source: str = "declared") -> None:
        self._lock.set_weight(nbytes, source)

    def check(self) -> None:
        self._lock.check()

    @property
    def kind(self) -> str:
        return str(self._lock.kind)

    @property
    def flags(self) -> int:
        """FLAG_OTHER_CONTENT | FLAG_LOST for the current or last hold."""
        return int(self._lock.flags)

    def release(self) -> None:
        self._lock.release()

    def set_label(self, label: Optional[str]) -> None:
        self._lock.set_label(label)

    @property
    def held(self) -> bool:
        return bool(self._lock.held)

    def close(self) -> None:
        self._lock.close()


class FilelockLock(BaseLock):
    name = "filelock"

    def __init__(self, path: str, timeout: Optional[float] = None) -> None:
        import filelock

        _check_path(path)
        super().__init__(path, timeout)
        # Not thread-local: the handle, not the thread, holds the lock (the
        # asyncio wrapper acquires in a worker thread and releases in the
        # loop's).  filelock releases in its own finalizer.
        self._lock = filelock.FileLock(path, thread_local=False)
        self._timeout_exc = filelock.Timeout

    def acquire(self, timeout: Optional[float] = None) -> bool:
        self._check_open()
        if self.held:
            raise _already_held(self.path)
        try:
            self._lock.acquire(timeout=-1 if timeout is None or timeout < 0 else timeout,
                               poll_interval=0.005)
        except self._timeout_exc:
            return False
        return True

    def release(self) -> None:
        self._check_open()
        if not self.held:
            raise RuntimeError("release of a lock that is not held")
        self._lock.release()

    @property
    def held(self) -> bool:
        return bool(self._lock.is_locked)

    def close(self) -> None:
        if self.held:
            self._lock.release(force=True)
        self._closed = True


def _close_fd(fd: int) -> None:
    # Close only: closing our descriptor lets the lock go when it is the
    # last reference to the open file description, and never takes it from
    # a forked child or parent that shares it (LOCK_UN would).
    try:
        os.close(fd)
    except OSError:
        pass


class FcntlLock(BaseLock):
    """``fcntl.flock`` with bounded backoff polling when there is a deadline."""

    name = "fcntl"

    def __init__(self, path: str, timeout: Optional[float] = None) -> None:
        import fcntl

        _check_path(path)
        super().__init__(path, timeout)
        self._fcntl: Any = fcntl
        self._fd: Optional[int] = None
        self._pid = os.getpid()
        self._finalizer: Optional[weakref.finalize[[int], FcntlLock]] = None

    def acquire(self, timeout: Optional[float] = None) -> bool:
        self._check_open()
        fcntl = self._fcntl
        if self._fd is not None:
            raise _already_held(self.path)
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
        self._pid = os.getpid()
        # A held handle that is garbage collected lets the lock go (#8.6).
        self._finalizer = weakref.finalize(self, _close_fd, fd)
        return True

    def release(self) -> None:
        self._check_open()
        if self._fd is None:
            raise RuntimeError("release of a lock that is not held")
        if os.getpid() != self._pid:
            raise RuntimeError("release in a forked child: the lock belongs to the parent "
                               "process")
        fd, self._fd = self._fd, None
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None
        try:
            self._fcntl.flock(fd, self._fcntl.LOCK_UN)
        finally:
            os.close(fd)

    @property
    def held(self) -> bool:
        return self._fd is not None and os.getpid() == self._pid

    def close(self) -> None:
        if self._fd is not None and os.getpid() == self._pid:
            self.release()
        elif self._fd is not None:  # a forked child drops its reference, the parent keeps it
            fd, self._fd = self._fd, None
            if self._finalizer is not None:
                self._finalizer.detach()
            _close_fd(fd)
        self._closed = True


def _unlink_if_ours(path: str, pid: int) -> None:
    try:
        with open(path) as f:
            if f.read().strip() != str(pid) or os.getpid() != pid:
                return
        os.unlink(path)
    except (OSError, ValueError):
        pass


class PidfileLock(BaseLock):
    """Create-exclusive PID file.  Not crash-safe: a holder killed hard leaves
    the file behind (it is taken over once its pid is gone), and two
    processes can both decide it is stale.  Last resort only."""

    name = "pidfile"

    def __init__(self, path: str, timeout: Optional[float] = None) -> None:
        warnings.warn(
            f"heavylock: using the PID-file lock at {path}: it is NOT crash-safe and NOT "
            "safe across processes; build the native extension or install filelock",
            PidfileWarning,
            stacklevel=3,
        )
        super().__init__(path + ".pid", timeout)
        self._held = False
        self._finalizer: Optional[weakref.finalize[[str, int], PidfileLock]] = None

    def _try(self) -> bool:
        try:
            fd = os.open(self.path,
                         os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0))
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
            except OSError:
                pass
            return False
        with os.fdopen(fd, "w") as f:
            f.write(f"{os.getpid()}\n")
        self._held = True
        self._finalizer = weakref.finalize(self, _unlink_if_ours, self.path, os.getpid())
        return True

    def acquire(self, timeout: Optional[float] = None) -> bool:
        self._check_open()
        if self._held:
            raise _already_held(self.path)
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
        self._check_open()
        if not self._held:
            raise RuntimeError("release of a lock that is not held")
        self._held = False
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass

    @property
    def held(self) -> bool:
        return self._held

    def close(self) -> None:
        if self._held:
            self.release()
        self._closed = True


_CLASSES: Dict[str, Type[BaseLock]] = {"native": NativeLock, "filelock": FilelockLock,
                                       "fcntl": FcntlLock, "pidfile": PidfileLock}


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


_fallback_said = False


def _say_fallback(backend: str) -> None:
    """Once per process: the extension is missing, and which backend serves."""
    global _fallback_said
    if _fallback_said:
        return
    _fallback_said = True
    warnings.warn(f"heavylock: the native extension could not be loaded ({_NATIVE_ERROR}); "
                  f"using the pure-Python '{backend}' backend (no holder records)",
                  FallbackWarning, stacklevel=4)


def choose_backend(value: Optional[str], source: str = "HEAVYLOCK_BACKEND") -> str:
    """Validate a requested backend name (None/"" = the best available)."""
    if not value:
        name = available_backend()
        if _native is None:
            _say_fallback(name)
        return name
    name = value.strip().lower()
    if name not in BACKENDS:
        raise ValueError(f"{source}={value!r} is not a lock backend; "
                         f"expected one of {', '.join(BACKENDS)}")
    if name == "native" and _native is None:
        raise ValueError(f"{source}={value!r}: the native extension heavylock._native "
                         f"could not be imported ({_NATIVE_ERROR})")
    return name


def open_lock(path: PathArg, backend: Optional[str] = None, *,
              timeout: Optional[float] = None, label: Optional[str] = None, slots: int = 1,
              budget: int = 0) -> BaseLock:
    """Open a lock handle on ``path`` (a lock file, or a lock server's
    ``postgresql://`` URL) with ``backend`` (default: the
    ``HEAVYLOCK_BACKEND`` variable, else the best available).  ``timeout``
    is how long ``with`` waits (None: forever); ``label`` goes into the
    holder record; ``slots`` how many holders at once (1 exclusive, 0 by
    memory: see :meth:`BaseLock.set_weight`); ``budget`` the bytes all
    holders may use (0: live memory).  Slots and URLs need the native
    backend (ValueError otherwise)."""
    target = os.fspath(path)
    if backend is None:
        backend = choose_backend(os.environ.get("HEAVYLOCK_BACKEND"))
    if backend != "native":
        if slots != 1:
            raise _needs_native(f"slots={slots!r}")
        if is_url(target):
            raise _needs_native(f"the lock server URL {_shown(target)}")
    lk: BaseLock
    if backend == "native":
        lk = NativeLock(target, timeout, slots=slots, budget=budget)
    else:
        lk = _CLASSES[backend](target, timeout)
    if label is not None:
        lk.set_label(label)
    return lk


def _url_target(source: str, v: str) -> Tuple[str, str, str]:
    """A lock server's URL from ``source``, passed through untouched."""
    if not v.startswith(("postgresql://", "postgres://")):
        raise ValueError(f"{source}='{v}' is a URL of no known lock server; use "
                         "postgresql://USER@HOST/DB?name=NAME")
    return v, source, (f"{source} is set to a PostgreSQL URL: the lock is shared by every "
                       "machine that uses that server")


def resolve_path(root: Optional[PathArg] = None) -> Tuple[str, str, str]:
    """Where the lock lives: ``(path, source, why)``; ValueError names a bad
    variable.  The native core decides; this Python twin serves only when
    the extension cannot load."""
    if _native is not None:
        path, source, why = _native.resolve_path(None if root is None else os.fspath(root))
        return path, source, why
    v = os.environ.get("HEAVYLOCK_URL")
    if v:
        if not is_url(v):
            raise ValueError(f"HEAVYLOCK_URL='{v}' is not a URL; use postgresql://USER@HOST/DB"
                             "?name=NAME, or HEAVYLOCK_PATH for a lock file")
        return _url_target("HEAVYLOCK_URL", v)
    v = os.environ.get("HEAVYLOCK_PATH")
    if v and is_url(v):
        return _url_target("HEAVYLOCK_PATH", v)
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
        if os.path.isdir(v):
            raise ValueError(f"LOCAL_MODEL_PATH='{v}' is a directory; it must name the "
                             "model file (e.g. a .gguf)")
        later = "" if os.path.exists(v) else " (the model is not there yet)"
        return (os.path.join(os.path.dirname(os.path.abspath(v)), LOCK_NAME), "LOCAL_MODEL_PATH",
                f"LOCAL_MODEL_PATH is set to '{v}': the lock lives next to the model{later}")
    base = os.fspath(root) if root else "."
    return (os.path.join(os.path.abspath(os.path.join(base, "models")), LOCK_NAME), "default",
            f"neither HEAVYLOCK_PATH nor LOCAL_MODEL_PATH is set: models/{LOCK_NAME} "
            f"under '{base}'")


def status(path: PathArg) -> Dict[str, Any]:
    """Who holds the lock at ``path`` (a file or a lock server's URL) and
    who waits (see ``heavylock status``)."""
    if _native is None:
        raise RuntimeError("status needs the native extension heavylock._native")
    return dict(_native.status(os.fspath(path)))

