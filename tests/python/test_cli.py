"""The heavylock CLI with real processes: exclusion, interop with flock(1)
and Python's filelock in both directions, killed holders, timeouts, hostile
paths, status.  Exclusion is judged from recorded intervals; times only in
generous windows."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from helpers import held_by, overlaps, read_intervals, record_cmd, wait_for


def run(cli, *args, **kw):
    return subprocess.run([cli, *map(str, args)], capture_output=True, text=True, **kw)


def hold(cli, lock, *extra, label=None):
    """Start `heavylock run` holding the lock until killed; wait until it holds."""
    os.makedirs(os.path.dirname(lock), exist_ok=True)
    args = [cli, "run", "--lock", str(lock)]
    if label:
        args += ["--label", label]
    p = subprocess.Popen(args + list(extra) + ["--", "sleep", "60"], start_new_session=True)
    wait_for(lambda: held_by(cli, lock) == p.pid, what="holder to take the lock")
    return p


def kill_group(p):
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()


def test_mutual_exclusion_many_processes(cli, lockfile, tmp_path):
    lockfile.parent.mkdir()
    log = tmp_path / "intervals"
    procs = [subprocess.Popen([cli, "run", "--lock", str(lockfile), "-q", "--",
                               *record_cmd(log, 0.02)]) for _ in range(8)]
    for _ in range(3):  # and a second wave, some with a deadline
        procs += [subprocess.Popen([cli, "run", "-w", "60", "--lock", str(lockfile), "-q", "--",
                                    *record_cmd(log, 0.02)]) for _ in range(4)]
    assert all(p.wait(timeout=120) == 0 for p in procs)
    iv = read_intervals(log)
    assert len(iv) == 20
    assert overlaps(iv) == []


def test_exit_codes(cli, lockfile):
    lockfile.parent.mkdir()
    assert run(cli, "run", "--lock", lockfile, "--", "sh", "-c", "exit 7").returncode == 7
    assert run(cli, "run", "--lock", lockfile, "--", "sh", "-c", "kill -9 $$").returncode == 137
    r = run(cli, "run", "--lock", lockfile, "--", "/no/such/program")
    assert r.returncode == 69
    assert "failed to execute /no/such/program" in r.stderr
    r = run(cli, "run", "--lock", lockfile)
    assert r.returncode == 64 and "Try 'heavylock --help'" in r.stderr
    assert run(cli, "frobnicate").returncode == 64
    r = run(cli, "run", "-w", "soon", "--", "true")
    assert r.returncode == 64 and "'soon'" in r.stderr
    assert run(cli, "run", "-E", "300", "--", "true").returncode == 64
    r = run(cli, "--help")
    assert r.returncode == 0 and "heavylock run [options] -- <command>" in r.stdout
    r = run(cli, "--version")
    assert r.returncode == 0 and "heavylock" in r.stdout


def test_nonblock_and_timeout_against_held_lock(cli, lockfile):
    holder = hold(cli, lockfile, label="holder")
    try:
        t0 = time.monotonic()
        r = run(cli, "run", "-n", "--lock", lockfile, "--", "true")
        assert r.returncode == 1
        assert time.monotonic() - t0 < 2
        t0 = time.monotonic()
        r = run(cli, "run", "-w", "0.3", "-E", "42", "--lock", lockfile, "--", "true")
        waited = time.monotonic() - t0
        assert r.returncode == 42
        assert 0.25 <= waited < 5
        assert f"held by pid {holder.pid} (holder)" in r.stderr
    finally:
        kill_group(holder)


def test_killed_holder_releases_promptly(cli, lockfile, tmp_path):
    holder = hold(cli, lockfile)
    log = tmp_path / "after"
    waiter = subprocess.Popen([cli, "run", "-w", "30", "--lock", str(lockfile), "-q", "--",
                               *record_cmd(log, 0)])
    time.sleep(0.2)
    assert waiter.poll() is None  # still waiting
    killed_at = time.time()
    kill_group(holder)  # SIGKILL: no chance to clean up
    assert waiter.wait(timeout=10) == 0
    (start, _end, _pid), = read_intervals(log)
    assert start >= killed_at
    assert start - killed_at < 3  # promptly: no stale lock outlives the holder


def test_command_inherits_the_lock_unless_close(cli, lockfile):
    # Like flock(1): killing only the heavylock process leaves the lock with
    # the command it runs, so a model still loading stays protected.
    lockfile.parent.mkdir()
    p = subprocess.Popen([cli, "run", "--lock", str(lockfile), "--", "sleep", "60"],
                         start_new_session=True)
    wait_for(lambda: held_by(cli, lockfile) == p.pid, what="holder")
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    assert run(cli, "run", "-n", "--lock", lockfile, "--", "true").returncode == 1
    os.killpg(p.pid, signal.SIGKILL)
    wait_for(lambda: run(cli, "run", "-n", "--lock", lockfile, "--", "true").returncode == 0,
             what="lock free after the command died")
    # With --close the command does not get it: killing heavylock frees it.
    p = subprocess.Popen([cli, "run", "-o", "--lock", str(lockfile), "--", "sleep", "60"],
                         start_new_session=True)
    wait_for(lambda: held_by(cli, lockfile) == p.pid, what="holder")
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    wait_for(lambda: run(cli, "run", "-n", "--lock", lockfile, "--", "true").returncode == 0,
             what="lock free after heavylock died")
    try:  # killed before it forked, there is no command to kill
        os.killpg(p.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@pytest.mark.parametrize("direction", ["flock-holds", "heavylock-holds"])
def test_interop_with_flock1(cli, lockfile, tmp_path, direction):
    log = tmp_path / "intervals"
    lockfile.parent.mkdir(parents=True, exist_ok=True)
    flock = ["flock", str(lockfile)]
    first = flock if direction == "flock-holds" else [cli, "run", "--lock", str(lockfile), "--"]
    second = [cli, "run", "--lock", str(lockfile), "-q", "--"] if direction == "flock-holds" \
        else flock
    a = subprocess.Popen(first + record_cmd(log, 0.6))
    wait_for(lambda: held_by(cli, lockfile), what="first holder")
    # the other tool cannot take it without waiting...
    if direction == "flock-holds":
        assert run(cli, "run", "-n", "--lock", lockfile, "--", "true").returncode == 1
    else:
        assert subprocess.run(["flock", "-n", str(lockfile), "true"]).returncode == 1
    # ...and a waiting one runs only after the holder finished
    b = subprocess.Popen(second + record_cmd(log, 0.05))
    assert a.wait(timeout=30) == 0 and b.wait(timeout=30) == 0
    iv = read_intervals(log)
    assert len(iv) == 2 and overlaps(iv) == []


FILELOCK_HOLD = """
import sys, time, filelock
lk = filelock.FileLock(sys.argv[1])
lk.acquire()
t0 = time.time(); print("held", flush=True); time.sleep(0.6); t1 = time.time()
open(sys.argv[2], "a").write(f"0 {t0!r} {t1!r}\\n")
lk.release()
"""

FILELOCK_TRY = """
import sys, filelock
try:
    filelock.FileLock(sys.argv[1]).acquire(timeout=0)
except filelock.Timeout:
    sys.exit(1)
"""


def test_interop_with_filelock(cli, lockfile, tmp_path):
    pytest.importorskip("filelock")  # a test dependency: requirements-dev.txt installs it
    log = tmp_path / "intervals"
    lockfile.parent.mkdir(parents=True, exist_ok=True)
    # filelock holds: heavylock is excluded, then runs after it
    a = subprocess.Popen([sys.executable, "-c", FILELOCK_HOLD, str(lockfile), str(log)],
                         stdout=subprocess.PIPE, text=True)
    assert a.stdout.readline().strip() == "held"
    assert run(cli, "run", "-n", "--lock", lockfile, "--", "true").returncode == 1
    r = run(cli, "run", "--lock", lockfile, "-q", "--", *record_cmd(log, 0.05))
    assert r.returncode == 0 and a.wait(timeout=30) == 0
    iv = read_intervals(log)
    assert len(iv) == 2 and overlaps(iv) == []
    # heavylock holds: filelock is excluded
    holder = hold(cli, lockfile)
    try:
        r = subprocess.run([sys.executable, "-c", FILELOCK_TRY, str(lockfile)])
        assert r.returncode == 1
    finally:
        kill_group(holder)
    assert subprocess.run([sys.executable, "-c", FILELOCK_TRY, str(lockfile)]).returncode == 0


def test_hostile_paths_refused(cli, tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    link = tmp_path / "link.lock"
    link.symlink_to(victim)
    r = run(cli, "run", "--lock", link, "--", "true")
    assert r.returncode == 66
    assert f"cannot open lock file {link}: lock path is a symbolic link" in r.stderr
    assert victim.read_text() == "precious\n"
    fifo = tmp_path / "fifo.lock"
    os.mkfifo(fifo)
    r = run(cli, "run", "--lock", fifo, "--", "true", timeout=10)  # must not hang
    assert r.returncode == 66 and "not a regular file" in r.stderr
    d = tmp_path / "dir.lock"
    d.mkdir()
    r = run(cli, "run", "--lock", d, "--", "true")
    assert r.returncode == 66 and "not a regular file" in r.stderr
    r = run(cli, "status", "--lock", link)
    assert r.returncode == 66 and "symbolic link" in r.stderr


def test_creates_missing_models_dir(cli, tmp_path):
    r = run(cli, "run", "--", "true", cwd=tmp_path)
    assert r.returncode == 0
    assert (tmp_path / "models" / ".llm_load.lock").is_file()


def test_status_flock_holder_without_record(cli, lockfile):
    lockfile.parent.mkdir(parents=True)
    p = subprocess.Popen(["flock", str(lockfile), "sleep", "60"], start_new_session=True)
    try:
        wait_for(lambda: held_by(cli, lockfile) == p.pid, what="flock(1) to hold")
        r = run(cli, "status", "--lock", lockfile)
        assert r.returncode == 1
        assert f"holder:  pid {p.pid}" in r.stdout
        assert "no holder record" in r.stdout
        assert f"flock {lockfile} sleep 60" in r.stdout
        data = json.loads(run(cli, "status", "--lock", lockfile, "--json").stdout)
        assert data["held"] and data["holder"]["record"] is False
    finally:
        kill_group(p)


def test_status_heavylock_holder_and_waiters(cli, lockfile):
    holder = hold(cli, lockfile, label="tests/test_chat.py::test_reply")
    # a heavylock waiter (watches the file) and a flock(1) one (blocked in flock(2))
    waiters = [subprocess.Popen([cli, "run", "-q", "-w", "60", "--lock", str(lockfile), "--",
                                 "true"]),
               subprocess.Popen(["flock", str(lockfile), "true"])]
    try:
        def seen():
            d = json.loads(run(cli, "status", "--lock", lockfile, "--json").stdout)
            return d if len(d["waiters"]) == 2 else None
        data = wait_for(seen, what="two waiters in status")
        assert data["holder"]["pid"] == holder.pid
        assert data["holder"]["label"] == "tests/test_chat.py::test_reply"
        assert 0 <= data["holder"]["held_for"] < 60
        assert {w["pid"] for w in data["waiters"]} == {w.pid for w in waiters}
        assert {w["how"] for w in data["waiters"]} == {"flock", "watch"}
        r = run(cli, "status", "--lock", lockfile)
        assert "label:   tests/test_chat.py::test_reply" in r.stdout
        assert "waiters: 2" in r.stdout
    finally:
        kill_group(holder)
        for w in waiters:
            assert w.wait(timeout=10) == 0
    r = run(cli, "status", "--lock", lockfile)
    assert r.returncode == 0 and ": free" in r.stdout


def test_waiter_says_who_holds(cli, lockfile):
    holder = hold(cli, lockfile, label="the-holder")
    try:
        r = run(cli, "run", "-v", "-w", "0.5", "--lock", lockfile, "--", "true")
        assert r.returncode == 1
        assert f"waiting for {lockfile}, held by pid {holder.pid} (the-holder)" in r.stderr
    finally:
        kill_group(holder)


def test_path_policy(cli, tmp_path):
    env = {k: v for k, v in os.environ.items()
           if k not in ("HEAVYLOCK_PATH", "LOCAL_MODEL_PATH")}
    r = run(cli, "path", cwd=tmp_path, env=env)
    assert r.stdout.strip() == str(tmp_path / "models" / ".llm_load.lock")
    assert "decided by default" in r.stderr
    model = tmp_path / "store" / "phi.gguf"
    model.parent.mkdir()
    model.write_bytes(b"GGUF")
    r = run(cli, "path", cwd=tmp_path, env={**env, "LOCAL_MODEL_PATH": "store/phi.gguf"})
    assert r.stdout.strip() == str(tmp_path / "store" / ".llm_load.lock")
    assert "decided by LOCAL_MODEL_PATH" in r.stderr
    # a model not downloaded yet: the lock goes where it will be, as the plugin
    # and the seed say (status, run and doctor work before the download)
    r = run(cli, "path", cwd=tmp_path, env={**env, "LOCAL_MODEL_PATH": "later/nope.gguf"})
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == str(tmp_path / "later" / ".llm_load.lock")
    assert "not there yet" in r.stderr
    r = run(cli, "status", cwd=tmp_path, env={**env, "LOCAL_MODEL_PATH": "later/nope.gguf"})
    assert r.returncode == 0, r.stderr
    r = run(cli, "path", cwd=tmp_path, env={**env, "HEAVYLOCK_PATH": ""})
    assert r.returncode == 64 and "HEAVYLOCK_PATH is set but empty" in r.stderr
    # run uses the same policy: the lock lands next to the model
    r = run(cli, "run", "--", "true", cwd=tmp_path, env={**env, "LOCAL_MODEL_PATH": str(model)})
    assert r.returncode == 0 and (model.parent / ".llm_load.lock").is_file()


# ---- hardening (issue 8) and flock(1) manners (issue 12) ----

def test_file_with_content_is_never_written(cli, tmp_path):
    # HEAVYLOCK_PATH=model.gguf is an easy slip: the file is locked, never emptied.
    model = tmp_path / "model.gguf"
    data = os.urandom(1 << 20)
    model.write_bytes(data)
    env = {**os.environ, "HEAVYLOCK_PATH": str(model)}
    r = run(cli, "run", "-v", "--label", "x", "--", "true", env=env)
    assert r.returncode == 0
    assert "lock file has other content: no holder record written" in r.stderr
    assert model.read_bytes() == data
    # while held, status says so; still intact after
    holder = hold(cli, model)
    try:
        r = run(cli, "status", "--lock", model)
        assert r.returncode == 1 and "other content" in r.stdout
        assert json.loads(run(cli, "status", "--lock", model, "--json").stdout)["other_content"]
    finally:
        kill_group(holder)
    assert model.read_bytes() == data


def test_timeout_values(cli, lockfile):
    lockfile.parent.mkdir()
    r = run(cli, "run", "-w", "nan", "--lock", lockfile, "--", "true")
    assert r.returncode == 64 and "invalid timeout value: 'nan'" in r.stderr
    r = run(cli, "run", "-w", "-1", "--lock", lockfile, "--", "true")
    assert r.returncode == 64 and "'-1'" in r.stderr
    assert run(cli, "run", "-w", "inf", "--lock", lockfile, "--", "true").returncode == 0
    assert run(cli, "run", "-w", "1e300", "--lock", lockfile, "--", "true").returncode == 0
    # a tiny timeout still tries once: a free lock is taken (it said "timeout
    # while waiting ..., free now" before it had tried)
    for tiny in ("1e-9", "1e-300"):
        r = run(cli, "run", "-w", tiny, "--lock", lockfile, "--", "true")
        assert r.returncode == 0, (tiny, r.stderr)
    # a 30-day timeout still waits, and wakes when the holder goes
    holder = hold(cli, lockfile)
    w = subprocess.Popen([cli, "run", "-q", "-w", str(30 * 86400), "--lock", str(lockfile), "--",
                          "true"])
    wait_for(lambda: json.loads(run(cli, "status", "--lock", lockfile, "--json").stdout)
             ["waiters"], what="the waiter")
    assert w.poll() is None
    t0 = time.monotonic()
    kill_group(holder)
    assert w.wait(timeout=10) == 0
    assert time.monotonic() - t0 < 5


def test_lock_path_too_long_or_in_missing_directory(cli, tmp_path):
    long = str(tmp_path / ("d" * 200)) * 25  # > 4095 bytes
    r = run(cli, "run", "--lock", long, "--", "true")
    assert r.returncode == 64
    assert f"lock path is {len(long)} bytes long; the limit is 4095" in r.stderr
    assert not (tmp_path / ("d" * 200)).exists()  # nothing created for a cut path
    r = run(cli, "status", "--lock", long)
    assert r.returncode == 64
    # like flock(1): an explicit --lock into a directory that does not exist is 66
    missing = tmp_path / "typo" / "x.lock"
    r = run(cli, "run", "--lock", missing, "--", "true")
    assert r.returncode == 66
    assert f"cannot open lock file {missing}: directory {missing.parent}" in r.stderr
    assert not missing.parent.exists()
    # the policy's own directories are still created
    env = {k: v for k, v in os.environ.items() if k not in ("HEAVYLOCK_PATH", "LOCAL_MODEL_PATH")}
    assert run(cli, "run", "--root", tmp_path / "proj", "--", "true", env=env).returncode == 0
    assert (tmp_path / "proj" / "models" / ".llm_load.lock").is_file()


def test_gguf_on_a_fifo_does_not_hang(cli, tmp_path):
    fifo = tmp_path / "model.gguf"
    os.mkfifo(fifo)
    r = run(cli, "gguf", fifo, timeout=10)
    assert r.returncode == 66 and "not a regular file" in r.stderr


def test_status_names_the_command_after_run_parent_died(cli, lockfile):
    lockfile.parent.mkdir()
    p = subprocess.Popen([cli, "run", "--lock", str(lockfile), "--", "sleep", "61"],
                         start_new_session=True)
    wait_for(lambda: held_by(cli, lockfile) == p.pid, what="holder")
    wait_for(lambda: open(f"/proc/{p.pid}/task/{p.pid}/children").read().strip(),
             what="heavylock run to start its command")  # else the kill beats the fork
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    try:
        data = wait_for(lambda: (lambda d: d if d["held"] and d["holder"]["pid"] != p.pid
                                 else None)(json.loads(run(cli, "status", "--lock", lockfile,
                                                           "--json").stdout)),
                        what="status to name the child")
        assert data["holder"]["command"] == "sleep 61"
        r = run(cli, "status", "--lock", lockfile)
        assert "command: sleep 61" in r.stdout and "another tool" not in r.stdout
        r = run(cli, "run", "-v", "-w", "0.2", "--lock", lockfile, "--", "true")
        assert f"held by pid {data['holder']['pid']} (sleep 61)" in r.stderr
    finally:
        os.killpg(p.pid, signal.SIGKILL)


@pytest.mark.parametrize("how", ["delete", "replace"])
def test_lock_file_deleted_or_replaced_while_held(cli, lockfile, tmp_path, how):
    log = tmp_path / "intervals"
    lockfile.parent.mkdir()
    first = subprocess.Popen([cli, "run", "--lock", str(lockfile), "--",
                              *record_cmd(log, 1.0)], stderr=subprocess.PIPE, text=True)
    wait_for(lambda: held_by(cli, lockfile) == first.pid, what="first holder")
    if how == "delete":
        lockfile.unlink()
    else:
        tmp = tmp_path / "new"
        tmp.write_text("")
        os.rename(tmp, lockfile)
    data = json.loads(run(cli, "status", "--lock", lockfile, "--json").stdout)
    assert data["held"] and data["holder"]["pid"] == first.pid
    assert data["holder"]["deleted_file"] is True
    assert run(cli, "run", "-n", "--lock", lockfile, "--", "true").returncode == 1
    second = subprocess.Popen([cli, "run", "-q", "--lock", str(lockfile), "--",
                               *record_cmd(log, 0.05)])
    assert first.wait(timeout=30) == 0 and second.wait(timeout=30) == 0
    iv = read_intervals(log)
    assert len(iv) == 2 and overlaps(iv) == []
    assert "was deleted or replaced while the command ran" in first.stderr.read()


def test_symlink_in_a_parent_directory_is_followed(cli, tmp_path):
    real = tmp_path / "bigdisk"
    real.mkdir()
    (tmp_path / "models").symlink_to(real)
    via = tmp_path / "models" / ".llm_load.lock"
    holder = hold(cli, via)
    try:
        assert held_by(cli, real / ".llm_load.lock") == holder.pid
        assert run(cli, "run", "-n", "--lock", real / ".llm_load.lock", "--",
                   "true").returncode == 1
    finally:
        kill_group(holder)
    # the last component is still refused
    (real / "last.lock").symlink_to(real / ".llm_load.lock")
    assert run(cli, "run", "--lock", real / "last.lock", "--", "true").returncode == 66


# ---- heavylock doctor ----

def test_doctor_all_well_and_who_holds(cli, lockfile):
    lockfile.parent.mkdir()
    r = run(cli, "doctor", lockfile)
    assert r.returncode == 0, r.stdout
    assert "flock test   ok: a second process was refused" in r.stdout
    assert "file system" in r.stdout and r.stdout.rstrip().endswith("all is well")
    assert not [p for p in lockfile.parent.iterdir() if p.name.startswith(".heavylock-doctor")]
    holder = hold(cli, lockfile, label="doc-holder")
    w = subprocess.Popen(["flock", str(lockfile), "true"])
    try:
        wait_for(lambda: "1 waiting" in run(cli, "doctor", lockfile).stdout, what="the waiter")
        r = run(cli, "doctor", lockfile)
        assert r.returncode == 0
        assert f"held by pid {holder.pid} (doc-holder)" in r.stdout
        assert f"waiter pid {w.pid} (blocked in flock)" in r.stdout
    finally:
        kill_group(holder)
        w.wait(timeout=10)


def test_doctor_names_each_problem(cli, tmp_path):
    link = tmp_path / "link.lock"
    link.symlink_to(tmp_path / "elsewhere")
    r = run(cli, "doctor", link)
    assert r.returncode == 1
    assert f"PROBLEM      {link} is a symbolic link" in r.stdout
    assert "1 problem found" in r.stdout
    model = tmp_path / "model.gguf"
    model.write_bytes(b"GGUF" + b"\0" * 100)
    r = run(cli, "doctor", model)
    assert r.returncode == 1 and "104 bytes that are not a heavylock record" in r.stdout
    env = {**os.environ, "HEAVYLOCK_PATH": str(tmp_path)}
    r = run(cli, "doctor", env=env)
    assert r.returncode == 1 and f"HEAVYLOCK_PATH='{tmp_path}' is a directory" in r.stdout
    assert run(cli, "doctor", "a", "b").returncode == 64


def test_doctor_sees_a_deleted_lock_file(cli, lockfile):
    holder = hold(cli, lockfile)
    try:
        lockfile.unlink()
        r = run(cli, "doctor", lockfile)
        assert r.returncode == 1
        assert f"held by pid {holder.pid}" in r.stdout
        assert "deleted or replaced while held" in r.stdout
    finally:
        kill_group(holder)


NOFLOCK_SHIM = r"""
#include <errno.h>
#include <sys/file.h>
/* A file system where flock(2) "succeeds" and excludes nobody (some FUSE
 * and network file systems behave so). */
int flock(int fd, int op) { (void)fd; (void)op; return 0; }
"""


def test_doctor_finds_a_flock_that_excludes_nobody(cli, tmp_path):
    shim_c = tmp_path / "noflock.c"
    shim_c.write_text(NOFLOCK_SHIM)
    shim = tmp_path / "noflock.so"
    subprocess.run(["cc", "-shared", "-fPIC", "-o", str(shim), str(shim_c)], check=True)
    env = {**os.environ, "LD_PRELOAD": str(shim)}
    r = run(cli, "doctor", tmp_path / "x.lock", env=env)
    assert r.returncode == 1, r.stdout
    assert "flock(2) does NOT exclude across processes" in r.stdout
    assert run(cli, "doctor", tmp_path / "x.lock").returncode == 0  # without the shim


def _doctor_predicts(out):
    """The exit code doctor says `heavylock run` would meet, or None."""
    import re
    m = re.search(r"`heavylock run` would exit (\d+)", out)
    return int(m.group(1)) if m else None


@pytest.fixture
def ro_mount(tmp_path):
    """A real read-only file system (tmpfs): mount(8) needs root."""
    mnt = tmp_path / "ro"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {r.stderr.strip()}")
    try:
        (mnt / "existing.lock").write_text("")
        subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True)
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=True)


def test_doctor_says_what_run_meets_on_a_read_only_file_system(cli, ro_mount):
    # No lock file yet, on a read-only file system: run cannot create it (73),
    # and doctor, which tries what run does, names the problem and the code.
    # (--lock on the mount; the policy's models/ under --root, to be created)
    for where in (["--lock", ro_mount / "x.lock"], ["--root", ro_mount]):
        r = run(cli, "run", *where, "--", "true")
        assert r.returncode == 73, (where, r.returncode, r.stderr)
        d = run(cli, "doctor", *where)
        assert d.returncode == 1 and "all is well" not in d.stdout, d.stdout
        assert "PROBLEM      cannot create the lock file" in d.stdout
        assert "Read-only file system" in d.stdout and _doctor_predicts(d.stdout) == 73
    # A lock file that exists there is locked on a read-only descriptor: run
    # works, and doctor agrees.
    existing = ro_mount / "existing.lock"
    assert run(cli, "run", "--lock", existing, "--", "true").returncode == 0
    d = run(cli, "doctor", existing)
    assert d.returncode == 0 and "all is well" in d.stdout, d.stdout


def test_doctor_says_what_run_meets_in_a_directory_it_cannot_write(cli):
    # A real second user (nobody) and a directory it cannot write: root
    # would write anywhere.
    import tempfile
    top = tempfile.mkdtemp(prefix="heavylock-ro-")
    try:
        os.chmod(top, 0o755)  # nobody may look, not write
        lock = os.path.join(top, "x.lock")
        as_nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", cli]
        r = subprocess.run(as_nobody + ["run", "--lock", lock, "--", "true"],
                           capture_output=True, text=True)
        if r.returncode == 127 or "setpriv" in r.stderr:
            pytest.skip(f"cannot run as nobody: {r.stderr.strip()}")
        if os.geteuid() != 0:
            pytest.skip("needs root to switch to the nobody user")
        assert r.returncode == 66 and "Permission denied" in r.stderr, (r.returncode, r.stderr)
        d = subprocess.run(as_nobody + ["doctor", lock], capture_output=True, text=True)
        assert d.returncode == 1 and "Permission denied" in d.stdout, d.stdout
        assert _doctor_predicts(d.stdout) == r.returncode
    finally:
        import shutil
        shutil.rmtree(top)


def test_status_of_a_missing_file_says_so_and_where_the_path_came_from(cli, tmp_path):
    """`heavylock status` from the wrong directory: "free" alone (rc 0) for a
    file that does not exist hid that it looked at another file."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("HEAVYLOCK_PATH", "LOCAL_MODEL_PATH", "HEAVYLOCK_URL")}
    where = tmp_path / "elsewhere"
    where.mkdir()
    r = run(cli, "status", cwd=where, env=env)
    missing = where / "models" / ".llm_load.lock"
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[:2] == [
        f"{missing}: free (the file does not exist: no one has locked it here)",
        "  path:    neither HEAVYLOCK_PATH nor LOCAL_MODEL_PATH is set: "
        "models/.llm_load.lock under '.' (decided by default)"]
    d = json.loads(run(cli, "status", "--json", cwd=where, env=env).stdout)
    assert (d["path"], d["exists"], d["path_source"], d["held"]) == (str(missing), False,
                                                                     "default", False)
    # an existing file, named by HEAVYLOCK_PATH: exists, and the source says so
    lock = tmp_path / "shared.lock"
    lock.touch()
    env["HEAVYLOCK_PATH"] = str(lock)
    r = run(cli, "status", cwd=where, env=env)
    assert r.stdout.splitlines()[0] == f"{lock}: free"
    assert "(decided by HEAVYLOCK_PATH)" in r.stdout.splitlines()[1]
    d = json.loads(run(cli, "status", "--json", cwd=where, env=env).stdout)
    assert (d["exists"], d["path_source"]) == (True, "HEAVYLOCK_PATH")
    # held: exit code 1 as before
    holder = hold(cli, lock)
    try:
        d = json.loads(run(cli, "status", "--json", "--lock", lock, cwd=where, env=env).stdout)
        assert (d["exists"], d["path_source"], d["held"]) == (True, "--lock", True)
        assert run(cli, "status", cwd=where, env=env).returncode == 1
    finally:
        kill_group(holder)
