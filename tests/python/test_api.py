"""The Python API a user sees: context managers, Timeout, asyncio, typing,
finalizers and the pure-Python fallback (issue #12, issue #8 item 6)."""

import asyncio
import errno
import gc
import os
import pickle
import subprocess
import sys
import textwrap
import threading
import time
import warnings

import pytest

import heavylock
from heavylock import aio, backends

from helpers import wait_for

ALL = ["native", "filelock", "fcntl", "pidfile"]


def open_quiet(path, backend, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", heavylock.PidfileWarning)
        return heavylock.open_lock(path, backend, **kw)


def taken_elsewhere(path, backend):
    """True when another handle (in another thread, as flock excludes per
    open file, not per process) cannot take the lock right now."""
    other = open_quiet(path, backend)
    out = []
    t = threading.Thread(target=lambda: out.append(other.acquire(0)))
    t.start()
    t.join(10)
    if out[0]:
        other.release()
    other.close()
    return not out[0]


@pytest.mark.parametrize("backend", ALL)
def test_every_backend_is_a_context_manager(lockfile, backend):
    lk = open_quiet(lockfile, backend)
    with lk as same:
        assert same is lk and lk.held
        assert taken_elsewhere(lockfile, backend)
    assert not lk.held and not taken_elsewhere(lockfile, backend)
    with lk.lock(5) as same:  # the raising form, as a context
        assert same is lk and lk.held
    assert not lk.held
    with pytest.raises(RuntimeError):  # the body raised: released all the same
        with lk:
            raise RuntimeError("boom")
    assert not lk.held and not taken_elsewhere(lockfile, backend)
    assert lk.acquire(0) is True  # the primitive keeps its bool
    with pytest.raises(OSError) as exc:
        lk.acquire(0)  # one hold per handle, on every backend
    assert exc.value.errno == errno.EDEADLK and "already holds" in str(exc.value)
    lk.release()
    lk.close()


HOLDER = """
import sys, time
from heavylock import _native
lk = _native.Lock(sys.argv[1])
lk.set_label("other-run")
assert lk.acquire(0)
print("held", flush=True)
sys.stdin.read()
"""


@pytest.fixture
def other_process(lockfile):
    lockfile.parent.mkdir(parents=True, exist_ok=True)
    p = subprocess.Popen([sys.executable, "-c", HOLDER, str(lockfile)], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline() == "held\n"
    yield p
    p.stdin.close()
    p.wait(10)


@pytest.mark.parametrize("backend", ["native", "filelock", "fcntl"])
def test_timeout_is_a_timeouterror_naming_path_and_holder(lockfile, other_process, backend):
    lk = heavylock.open_lock(lockfile, backend, timeout=0.3)
    t0 = time.monotonic()
    with pytest.raises(heavylock.Timeout) as exc:
        with lk:
            pytest.fail("entered a lock another process holds")
    assert time.monotonic() - t0 >= 0.3
    e = exc.value
    assert isinstance(e, TimeoutError) and e.path == str(lockfile) and e.timeout == 0.3
    assert f"held by pid {other_process.pid} (other-run)" in e.holder
    assert str(e) == (f"could not take the lock {lockfile} after waiting 0.3 s: {e.holder}")
    again = pickle.loads(pickle.dumps(e))  # xdist ships errors between processes
    assert (type(again), again.path, again.holder, str(again)) == (type(e), e.path, e.holder,
                                                                   str(e))
    with pytest.raises(heavylock.Timeout, match="after one try"):
        lk.lock(0)
    assert lk.acquire(0) is False and not lk.held
    lk.close()


def test_fcntl_backend_lets_go_when_a_held_handle_is_garbage_collected(lockfile):
    # Old code: the descriptor leaked with the lock on it until the process exited.
    lk = heavylock.open_lock(lockfile, "fcntl")
    assert lk.acquire(0)
    lk.cycle = lk  # only the cycle collector can free it
    del lk
    gc.collect()
    probe = heavylock.open_lock(lockfile, "native")
    assert probe.acquire(0), "the collected fcntl handle still holds the lock"
    probe.close()


def test_fcntl_backend_forked_child_never_releases_the_parents_lock(lockfile):
    lk = heavylock.open_lock(lockfile, "fcntl")
    assert lk.acquire(0)
    pid = os.fork()
    if pid == 0:  # the child: release must refuse, close and exit must not unlock
        try:
            lk.release()
            code = 1
        except RuntimeError:
            code = 0
        lk.close()
        os._exit(code)
    assert os.waitpid(pid, 0)[1] == 0
    assert taken_elsewhere(lockfile, "native")
    lk.release()


# ---- asyncio ----

async def wait_while_ticking(alk, holder):
    """Wait for `alk` while `holder` holds the lock; other tasks must run."""
    ticks = 0
    stop = asyncio.Event()

    async def ticker():
        nonlocal ticks
        while not stop.is_set():
            ticks += 1
            await asyncio.sleep(0.001)

    tick_task = asyncio.create_task(ticker())
    waiter = asyncio.create_task(alk.acquire())
    while ticks < 50:  # the loop runs while the waiter waits
        await asyncio.sleep(0.005)
        assert not waiter.done()
    released = time.time()
    holder.release()
    assert await asyncio.wait_for(waiter, 10) is True
    acquired = time.time()
    stop.set()
    await tick_task
    return ticks, released, acquired


@pytest.mark.parametrize("backend", ALL)
def test_async_wait_lets_other_tasks_run(lockfile, backend):
    holder = open_quiet(lockfile, backend)
    assert holder.acquire(0)
    alk = aio.AsyncLock(open_quiet(lockfile, backend))
    ticks, released, acquired = asyncio.run(wait_while_ticking(alk, holder))
    assert ticks >= 50 and acquired >= released and alk.held
    alk.release()
    assert not taken_elsewhere(lockfile, backend)


def test_async_with_and_timeout(lockfile, other_process):
    async def main():
        alk = aio.open_lock(lockfile, "native", timeout=0.2)
        with pytest.raises(heavylock.Timeout) as exc:
            async with alk:
                pytest.fail("entered a lock another process holds")
        assert "other-run" in exc.value.holder and not alk.held
        assert await alk.acquire(0) is False
        return alk

    alk = asyncio.run(main())
    other_process.stdin.close()
    other_process.wait(10)

    async def then():
        async with alk as same:
            assert same is alk and alk.held
        assert not alk.held

    asyncio.run(then())


@pytest.mark.parametrize("backend", ["native", "fcntl"])
def test_cancelled_wait_leaves_nothing_locked(lockfile, backend):
    """Cancel while waiting; cancel at the moment the holder lets go (the
    waiting thread may win just as the task gives up); let go just after the
    task gave up (the thread wins after the cancel).  After the cancelled
    task ends, nothing is held and the handle takes the lock again."""
    holder = open_quiet(lockfile, backend)
    alk = aio.AsyncLock(open_quiet(lockfile, backend))

    async def once(race):
        assert holder.acquire(0)
        task = asyncio.create_task(alk.acquire())
        await asyncio.sleep(0)
        wait_for(lambda: any(t.name.startswith("heavylock-aio-wait")
                             for t in threading.enumerate()), what="the waiting thread")
        if race == "after":
            assert task.cancel()
            await asyncio.sleep(0)  # the task has seen the cancel and told the thread
            holder.release()
            race = 1  # the holder has let go
        elif race:
            holder.release()
            await asyncio.sleep(race)
        if task.cancel():
            with pytest.raises(asyncio.CancelledError):
                await task
            assert not alk.held
        else:  # it had won already: a normal hold
            assert task.result() is True and alk.held
            alk.release()
        if not race:
            holder.release()
        assert not taken_elsewhere(lockfile, backend), "a cancelled wait kept the lock"
        assert await alk.acquire(0) is True  # and the handle is not left busy
        alk.release()

    async def main():
        await once(0)
        for i in range(30):
            await once(0.0005 * (i % 6))
        for i in range(5):
            await once("after")

    asyncio.run(main())


# ---- typing ----

USER_CODE = """
import asyncio
import errno
import heavylock
from heavylock import aio

def load(path: str) -> str:
    lk = heavylock.open_lock(path, timeout=30)
    got: bool = lk.acquire(0)
    if got:
        lk.release()
    try:
        with lk:
            pass
        with lk.lock(5) as held:
            name: str = held.path
    except heavylock.Timeout as e:
        holder: str = e.holder
        where: str = e.path
        return holder + where
    p, source, why = heavylock.resolve_path()
    return name + p + source + why

async def aload(path: str) -> bool:
    async with aio.open_lock(path, slots=2) as alk:
        return alk.held

def slots(path: str) -> int:
    from typing import Any, Dict, Optional
    from heavylock import _native
    lk = heavylock.open_lock(path, slots=0, budget=_native.size_parse("2G"))
    lk.set_weight(_native.gguf_estimate("m.gguf", n_ctx=512)["total"], "estimated")

    def on_wait(st: Dict[str, Any], waited: float) -> Optional[bool]:
        return waited > 60 or not st["holders"]

    try:
        if isinstance(lk, heavylock.backends.NativeLock) and lk.acquire(
                5, on_wait=on_wait, first=1.0, every=15.0):
            lk.check()
            kind: str = lk.kind
            flags: int = lk.flags & _native.FLAG_LOST
            lk.release()
            return flags + len(kind)
    except heavylock.SelfDeadlock as e:
        return e.errno or 0
    except heavylock.LockLost:
        return -1
    free: Optional[int] = _native.mem_free()
    return len(_native.size_format(free or 0))
"""


def test_a_users_code_is_mypy_strict_clean(tmp_path):
    pytest.importorskip("mypy", reason="mypy is in requirements-dev.txt")
    (tmp_path / "user.py").write_text(USER_CODE)
    bad = tmp_path / "bad.py"
    bad.write_text("import heavylock\nx: int = heavylock.open_lock('p').acquire(0.5, 1)\n")
    # One run for both files (mypy's start-up dominates).
    r = subprocess.run([sys.executable, "-m", "mypy", "--strict", "--no-incremental",
                        "user.py", "bad.py"], capture_output=True, text=True, cwd=tmp_path)
    errors = [line for line in r.stdout.splitlines() if ": error:" in line]
    assert [e for e in errors if e.startswith("user.py")] == [], r.stdout + r.stderr
    # ...and the types are real, not Any everywhere: a wrong call is caught.
    assert len(errors) == 1 and errors[0].startswith("bad.py:2: error: Too many arguments"), \
        r.stdout + r.stderr


# ---- the pure-Python fallback ----

HIDE_NATIVE = """
import importlib.abc, sys
class Hide(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "heavylock._native":
            raise ImportError("hidden by the test (as if it could not be built)")
        return None
sys.meta_path.insert(0, Hide())
"""

FALLBACK = """
import os, sys, warnings
import heavylock
print("me", os.getpid())
path = sys.argv[1]
with warnings.catch_warnings(record=True) as seen:
    warnings.simplefilter("always")
    a = heavylock.open_lock(path)
    b = heavylock.open_lock(path, timeout=0.2)
said = [str(w.message) for w in seen if issubclass(w.category, heavylock.FallbackWarning)]
print("said", len(said), said[0] if said else "")
print("backend", a.name, heavylock.available_backend())
with a:
    try:
        with b:
            print("entered twice")
    except heavylock.Timeout as e:
        print("timeout", e.holder)
print("resolved", heavylock.resolve_path("/r")[1])
"""


@pytest.mark.parametrize("have_filelock", [True, False])
def test_without_the_extension_the_package_works_and_says_so_once(tmp_path, lockfile,
                                                                     have_filelock):
    site = tmp_path / "site"
    site.mkdir()
    hide = HIDE_NATIVE
    if not have_filelock:
        hide += "\nimport builtins\n_imp = builtins.__import__\n" \
                "def imp(name, *a, **k):\n" \
                "    if name == 'filelock': raise ImportError('no filelock')\n" \
                "    return _imp(name, *a, **k)\nbuiltins.__import__ = imp\n"
    (site / "sitecustomize.py").write_text(hide)
    env = dict(os.environ, PYTHONPATH=str(site))
    env.pop("HEAVYLOCK_BACKEND", None)
    lockfile.parent.mkdir(parents=True)
    r = subprocess.run([sys.executable, "-c", FALLBACK, str(lockfile)], capture_output=True,
                       text=True, env=env, timeout=60)
    assert r.returncode == 0, r.stderr
    want = "filelock" if have_filelock else "fcntl"
    out = r.stdout
    assert f"said 1 heavylock: the native extension could not be loaded (hidden by the test" \
           in out and f"using the pure-Python '{want}' backend" in out, out
    assert f"backend {want} {want}" in out
    me = out.split("me ", 1)[1].split()[0]
    assert f"timeout held by pid {me} (" in out  # from /proc/locks, without the extension
    assert "entered twice" not in out and "resolved default" in out

    # The plugin, too, runs on the fallback and says which backend it uses.
    (tmp_path / "proj").mkdir()
    (tmp_path / "proj" / "test_x.py").write_text(textwrap.dedent("""
        import pytest
        @pytest.mark.llm
        def test_heavy(): pass
    """))
    r = subprocess.run([sys.executable, "-m", "pytest", "-p", "heavylock", "-W",
                        "default", "-q", "-rw", "test_x.py"], capture_output=True, text=True,
                       env=dict(env, RUN_HEAVY_INTEGRATION="1"), cwd=tmp_path / "proj",
                       timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"backend {want}" in r.stdout, r.stdout


SLOT_HOLDER = textwrap.dedent("""
    import sys
    from heavylock import _native
    lk = _native.Lock(sys.argv[1])
    lk.set_slots(2)
    assert lk.acquire(30)
    print("held", flush=True)
    sys.stdin.read()
""")


def test_async_native_wait_keeps_its_place_in_the_queue(lockfile):
    """An asyncio waiter on a full slots lock keeps one ticket for the whole
    wait (before, its 0.2 s slices left and rejoined the queue, so later
    waiters kept passing it), and gets the freed slot before a later one."""
    lockfile.parent.mkdir(parents=True, exist_ok=True)
    holders = [subprocess.Popen([sys.executable, "-c", SLOT_HOLDER, str(lockfile)],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
               for _ in range(2)]
    assert [h.stdout.readline() for h in holders] == ["held\n"] * 2

    def start_later():
        return subprocess.Popen([sys.executable, "-c", textwrap.dedent("""
            import sys
            from heavylock import _native
            lk = _native.Lock(sys.argv[1])
            lk.set_slots(2)
            print("got" if lk.acquire(60) else "no", flush=True)
        """), str(lockfile)], stdout=subprocess.PIPE, text=True)

    later = None

    def ticket(pid):
        for w in heavylock.status(lockfile)["waiters"]:
            if w["pid"] == pid and w["ticket"]:
                return w["ticket"]
        return None

    async def main():
        alk = aio.open_lock(lockfile, "native", slots=2)
        task = asyncio.create_task(alk.acquire(60))
        mine = await asyncio.to_thread(wait_for, lambda: ticket(os.getpid()),
                                       what="our ticket")
        nonlocal later
        later = start_later()
        assert await asyncio.to_thread(wait_for, lambda: ticket(later.pid),
                                       what="the later waiter's ticket") > mine
        seen = set()
        end = time.monotonic() + 1.0  # five slices of the old waiter
        while time.monotonic() < end:
            seen.add(ticket(os.getpid()))
            await asyncio.sleep(0.02)
        assert seen == {mine}, "the asyncio waiter left and rejoined the queue"
        holders[0].stdin.close()  # one slot frees: the first in line gets it
        assert await asyncio.wait_for(task, 30) is True
        st = heavylock.status(lockfile)
        assert later.pid in [w["pid"] for w in st["waiters"]]
        assert later.poll() is None
        alk.release()
        alk.close()

    try:
        asyncio.run(main())
        assert later.stdout.readline() == "got\n"
        assert ticket(os.getpid()) is None
    finally:
        for p in holders + ([later] if later else []):
            if p.stdin:
                p.stdin.close()
            if p.poll() is None:
                p.kill()
            p.wait(30)


@pytest.mark.parametrize("backend", ALL)
def test_a_closed_handle_refuses_to_lock_again_on_every_backend(lockfile, backend):
    # Bug: the filelock, fcntl and pidfile backends took the lock again
    # after close() (acquire returned True); the native one raises.
    lk = open_quiet(lockfile, backend)
    assert lk.acquire(0)
    lk.close()
    assert not lk.held
    for call in (lambda: lk.acquire(0), lambda: lk.acquire(1), lk.lock, lk.release):
        with pytest.raises(ValueError, match="lock is closed"):
            call()
    assert not lk.held and not taken_elsewhere(lockfile, backend)
    lk.close()  # closing twice is harmless
