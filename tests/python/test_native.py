"""The C extension and the Python backends."""

import errno
import os
import signal
import struct
import subprocess
import sys
import threading
import time

import pytest

import heavylock
from heavylock import backends
from heavylock import _native

from helpers import overlaps, read_intervals, wait_for


def test_acquire_release_and_record(lockfile):
    lk = _native.Lock(str(lockfile))
    assert not lk.held
    lk.set_label("tests/test_x.py::test_y")
    assert lk.acquire(0) is True
    assert lk.held
    st = _native.status(str(lockfile))
    assert st["held"] and st["holder_pid"] == os.getpid()
    assert st["has_record"] and st["record"]["label"] == "tests/test_x.py::test_y"
    # the record names this process by pid and start time (field 22 of stat)
    with open(f"/proc/{os.getpid()}/stat") as f:
        starttime = int(f.read().rsplit(")", 1)[1].split()[19])
    assert st["record"]["start"] == starttime
    _big = bytearray(64 << 20)  # a changing vsize must not change the identity
    assert _native.status(str(lockfile))["has_record"]
    lk.release()
    assert not lk.held
    with pytest.raises(RuntimeError, match="not held"):
        lk.release()
    with lk:
        assert lk.held
    assert not lk.held
    lk.close()
    with pytest.raises(ValueError, match="closed"):
        lk.acquire()


def test_same_thread_second_handle_is_edeadlk_not_a_hang(lockfile):
    a, b = _native.Lock(str(lockfile)), _native.Lock(str(lockfile))
    assert a.acquire()
    t0 = time.monotonic()
    with pytest.raises(OSError) as exc:
        b.acquire()  # would wait forever
    assert exc.value.errno == errno.EDEADLK
    assert time.monotonic() - t0 < 1
    a.release()
    assert b.acquire(0)
    b.release()


def test_gil_released_while_waiting(lockfile):
    holder = _native.Lock(str(lockfile))
    assert holder.acquire()
    got = []

    def waiter():
        lk = _native.Lock(str(lockfile))
        got.append(lk.acquire(5))
        lk.release()

    t = threading.Thread(target=waiter)
    t.start()
    n = 0
    end = time.monotonic() + 0.3
    while time.monotonic() < end:  # this thread keeps running while the other waits
        n += 1
    assert n > 1000 and not got
    holder.release()
    t.join(10)
    assert got == [True]


WAIT_FOREVER = """
import signal, sys, threading, time
from heavylock import _native
lk = _native.Lock(sys.argv[1])
if len(sys.argv) > 3:  # the signal goes to another thread: the wait sees no EINTR
    threading.Thread(target=time.sleep, args=(1000,), daemon=True).start()
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
print("waiting", flush=True)
try:
    lk.acquire(None if sys.argv[2] == "none" else float(sys.argv[2]))
except KeyboardInterrupt:
    print("interrupted", flush=True)
    sys.exit(3)
"""


HOLD_UNTIL_STDIN_CLOSES = """
import sys
from heavylock import _native
lk = _native.Lock(sys.argv[1])
assert lk.acquire(0)
print("held", flush=True)
sys.stdin.read()
"""


@pytest.mark.parametrize("timeout,where", [("none", "main"), ("60", "main"),
                                           ("60", "other-thread")])
def test_ctrl_c_interrupts_a_wait(lockfile, timeout, where):
    # "other-thread": the kernel hands SIGINT to a thread that is not
    # waiting, so the wait is never interrupted by EINTR; before the waits
    # were sliced, Ctrl-C was noticed only when the 60 s ran out.
    # The holder is a sibling process: a waiter whose parent holds the lock
    # may be told at once that its wait would never end.
    lockfile.parent.mkdir(parents=True, exist_ok=True)
    holder = subprocess.Popen([sys.executable, "-c", HOLD_UNTIL_STDIN_CLOSES, str(lockfile)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline() == "held\n"
    p = subprocess.Popen([sys.executable, "-c", WAIT_FOREVER, str(lockfile), timeout]
                         + ([where] if where != "main" else []),
                         stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "waiting"
    wait_for(lambda: any(w["pid"] == p.pid for w in _native.status(str(lockfile))["waiters"]),
             what="the child to wait")
    p.send_signal(signal.SIGINT)
    assert p.wait(timeout=10) == 3
    assert p.stdout.readline().strip() == "interrupted"
    holder.stdin.close()
    assert holder.wait(10) == 0


def test_errors_name_the_path(tmp_path):
    link = tmp_path / "l.lock"
    link.symlink_to(tmp_path / "target")
    with pytest.raises(OSError) as exc:
        _native.Lock(str(link))
    assert exc.value.errno == errno.ELOOP and exc.value.filename == str(link)
    assert "symbolic link" in str(exc.value)
    assert not (tmp_path / "target").exists()


ENV_CASES = [
    {},
    {"LOCAL_MODEL_PATH": "store/m.gguf"},
    {"LOCAL_MODEL_PATH": "store"},
    {"LOCAL_MODEL_PATH": "missing.gguf"},
    {"LOCAL_MODEL_PATH": ""},
    {"HEAVYLOCK_PATH": "x/custom.lock", "LOCAL_MODEL_PATH": "missing.gguf"},
    {"HEAVYLOCK_PATH": ""},
    {"HEAVYLOCK_PATH": "store"},
]


@pytest.mark.parametrize("env", ENV_CASES, ids=lambda e: ",".join(f"{k}={v}" for k, v in e.items()) or "none")
def test_python_policy_twin_matches_the_core(tmp_path, monkeypatch, env):
    (tmp_path / "store").mkdir()
    (tmp_path / "store" / "m.gguf").write_bytes(b"GGUF")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HEAVYLOCK_PATH", raising=False)
    monkeypatch.delenv("LOCAL_MODEL_PATH", raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)

    def outcome():
        try:
            return backends.resolve_path(str(tmp_path))
        except ValueError as exc:
            return ("error", str(exc))

    native = outcome()
    monkeypatch.setattr(backends, "_native", None)
    assert outcome() == native


HOLD_WITH = """
import sys, time
from heavylock import backends
lk = backends.open_lock(sys.argv[1], sys.argv[2])
assert lk.acquire()
t0 = time.time(); time.sleep(0.3); t1 = time.time()
open(sys.argv[3], "a").write(f"0 {t0!r} {t1!r}\\n")
lk.release()
"""


@pytest.mark.parametrize("backend", ["filelock", "fcntl"])
def test_fallback_backends_exclude_the_native_lock(lockfile, tmp_path, backend):
    if backend == "filelock":
        pytest.importorskip("filelock")
    log = tmp_path / "iv"
    procs = [subprocess.Popen([sys.executable, "-c", HOLD_WITH, str(lockfile), b, str(log)])
             for b in (backend, "native", backend, "native")]
    assert all(p.wait(timeout=30) == 0 for p in procs)
    iv = read_intervals(log)
    assert len(iv) == 4 and overlaps(iv) == []


def test_backend_choice():
    assert backends.choose_backend(None) == "native"
    assert backends.choose_backend("FCNTL") == "fcntl"
    with pytest.raises(ValueError, match="HEAVYLOCK_BACKEND='flck' is not a lock backend"):
        backends.choose_backend("flck")


def test_pidfile_backend_warns_and_excludes_itself(lockfile):
    with pytest.warns(backends.PidfileWarning, match="NOT crash-safe"):
        a = backends.open_lock(str(lockfile), "pidfile")
    with pytest.warns(backends.PidfileWarning):
        b = backends.open_lock(str(lockfile), "pidfile")
    assert a.acquire(0) and not b.acquire(0.05)
    a.release()
    assert b.acquire(0)
    b.release()


def test_gguf_info_and_memory(tmp_path):
    def s(x):
        return struct.pack("<Q", len(x)) + x.encode()
    body = b"GGUF" + struct.pack("<IQQ", 3, 0, 2)
    body += s("general.architecture") + struct.pack("<I", 8) + s("llama")
    body += s("llama.context_length") + struct.pack("<II", 4, 4096)
    body += b"\0" * (-len(body) % 32) + b"\1" * 64
    (tmp_path / "m.gguf").write_bytes(body)
    info = _native.gguf_info(str(tmp_path / "m.gguf"))
    assert info["architecture"] == "llama" and info["context_length"] == 4096
    assert info["tensor_bytes"] == 64
    (tmp_path / "bad.gguf").write_bytes(b"nope")
    with pytest.raises(ValueError, match="not a GGUF"):
        _native.gguf_info(str(tmp_path / "bad.gguf"))
    assert _native.mem_available() > 0
    assert _native.tree_rss(os.getpid()) > 1 << 20
    assert heavylock.available_backend() == "native"


def test_library_errors_become_the_right_python_exceptions(tmp_path):
    # One mapping for every call: -errno -> the OSError subclass for it,
    # HL_E* codes -> their own kinds, each naming the path.
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError) as exc:
        _native.Lock(str(tmp_path / "file" / "x.lock"))
    assert exc.value.filename == str(tmp_path / "file" / "x.lock")
    with pytest.raises(OSError, match="not a regular file") as exc:
        _native.Lock(str(tmp_path))
    assert exc.value.errno == errno.EINVAL and exc.value.filename == str(tmp_path)
    lk = _native.Lock(str(tmp_path / "l.lock"))
    with pytest.raises(RuntimeError, match="not held"):
        lk.release()
    with pytest.raises(ValueError, match="NaN"):
        lk.acquire(float("nan"))
    with pytest.raises(ValueError, match="NUL"):
        lk.set_label("a\0b")
    assert lk.acquire(float("inf")) is True  # inf is "forever", not an overflow
    lk.close()
    lk.close()  # closing twice is fine
    with pytest.raises(ValueError, match="closed"):
        lk.path


def test_a_tiny_timeout_still_tries_once(lockfile):
    """acquire(1e-9) on a free lock returned False: the time left was
    computed, and found spent, before the first try."""
    for tiny in (1e-9, 1e-300):
        lk = heavylock.open_lock(str(lockfile))
        assert lk.acquire(tiny) is True, tiny
        lk.release()
        lk.close()
