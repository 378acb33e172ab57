"""Hostile inputs: what an attacker or a careless user can put at the lock
path, in a record, in the environment or on the command line.  Each test is
named in docs/hostile-inputs.md.  Output for programs must parse, output for
terminals must not carry control bytes it did not write, and no file that is
not ours is truncated."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from helpers import held_by, wait_for

CONTROL = re.compile(rb"[\x00-\x08\x0b-\x1f\x7f]|\xc2[\x80-\x9f]")


def run(cli, *args, **kw):
    return subprocess.run([cli, *map(str, args)], capture_output=True, **kw)


def hostile_record(pid, start="0"):
    label = "\x1b[2J\x07".encode() + b"\xff\xfe bad " + "€".encode() * 200  # cut mid-char
    return (b"heavylock-holder 1\npid=%d\nstart=%s\nacquired=nan\nhost=h\x1b]0;pwn\x07\n"
            b"boot_id=\xff\xff\nlabel=%s\ncmd=rm -rf \xe2\x82\n" % (pid, start.encode(), label))


@pytest.fixture
def held_by_flock(tmp_path):
    """A lock file held by flock(1) (it writes no record), and its holder."""
    lock = tmp_path / "x.lock"
    lock.write_bytes(b"")
    p = subprocess.Popen(["flock", str(lock), "sleep", "60"], start_new_session=True)
    ino = f":{os.stat(lock).st_ino} "
    wait_for(lambda: any(ino in line and "FLOCK" in line for line in open("/proc/locks")),
             what="flock(1) to hold")
    yield lock, p
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()


def check_outputs(cli, lock):
    text = run(cli, "status", "--lock", lock)
    assert text.returncode in (0, 1), text.stderr
    assert not CONTROL.search(text.stdout.replace(b"\n", b"")), text.stdout
    text.stdout.decode("utf-8")  # strict: valid UTF-8
    js = run(cli, "status", "--lock", lock, "--json")
    data = json.loads(js.stdout.decode("utf-8"))
    assert "NaN" not in js.stdout.decode() and "Infinity" not in js.stdout.decode()
    return text.stdout.decode(), data


def test_forged_record_naming_the_holder(cli, held_by_flock):
    lock, p = held_by_flock
    wait_for(lambda: held_by(cli, lock) == p.pid, what="flock(1) to hold")
    with open(lock, "r+b") as f:  # behind the holder's back
        f.write(hostile_record(p.pid, start="0"))
    text, data = check_outputs(cli, lock)
    assert data["holder"]["pid"] == p.pid
    assert data["holder"]["record"] is False  # start=0 does not match: not trusted
    assert "bad" not in text  # the forged label is not shown as the holder's


def test_hostile_stale_record(cli, tmp_path):
    lock = tmp_path / "x.lock"
    lock.write_bytes(hostile_record(999999999, start="5"))
    text, data = check_outputs(cli, lock)
    assert data["held"] is False and data["stale_record"] is True


def test_hostile_path_and_waiter_command(cli, tmp_path):
    # A lock path with ESC, BEL, a newline and a byte that is not UTF-8.
    lock = os.path.join(os.fsencode(tmp_path), b"a\x1b[31m\x07\nb\xff.lock")
    open(lock, "wb").close()
    p = subprocess.Popen([b"flock", lock, b"sleep", b"60"], start_new_session=True)
    try:
        def held():
            return json.loads(run(cli, "status", "--lock", os.fsdecode(lock), "--json").stdout)
        wait_for(lambda: held()["held"], what="flock(1) to hold")
        text, data = check_outputs(cli, os.fsdecode(lock))
        assert "\\x1b" in text and "\\xff" in text  # shown, visibly
        assert data["path"].endswith("\ufffd.lock")
        # the holder's command line carries the same bytes
        assert "\ufffd" in data["holder"]["command"] or "?" in data["holder"]["command"]
    finally:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()


def test_hostile_path_in_every_cli_message(cli, tmp_path):
    """The lock path (from the environment or a project's settings: any
    bytes) reached the terminal raw in the waiting notice, the timeout, the
    busy line, doctor, and the errors of run, gguf and usage: ESC, BEL, a
    newline, a byte that is not UTF-8.  Each is shown as \\xHH instead."""
    lock = os.path.join(os.fsencode(tmp_path), b"a\x1b]0;pwn\x07\nb\xff\xc2\x9b.lock")
    open(lock, "wb").close()
    shown = os.fsdecode(os.path.join(os.fsencode(tmp_path), b"")) + \
        "a\\x1b]0;pwn\\x07\\x0ab\\xff\\xc2\\x9b.lock"
    p = subprocess.Popen([b"flock", lock, b"sleep", b"60"], start_new_session=True)
    try:
        wait_for(lambda: json.loads(run(cli, "status", "--lock", os.fsdecode(lock),
                                        "--json").stdout)["held"], what="flock(1) to hold")
        path = os.fsdecode(lock)
        outs = [run(cli, "run", "-v", "-w", "0.3", "--lock", path, "--", "true").stderr,
                run(cli, "run", "-v", "-n", "--lock", path, "--", "true").stderr,
                run(cli, "run", "-w", "0.3", "--slots", "2", "--lock", path, "--", "true").stderr,
                run(cli, "doctor", path).stdout,
                run(cli, "gguf", path).stderr,
                run(cli, "run", "--lock", os.fsdecode(lock + b"/x"), "--", "true").stderr,
                run(cli, "run", "-w", path, "--", "true").stderr]
    finally:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
    for out in outs:
        assert not CONTROL.search(out.replace(b"\n", b"")), out
        text = out.decode("utf-8")  # strict: valid UTF-8
        assert shown in text, text
    assert "waiting for " + shown in outs[0].decode() and "timeout while" in outs[0].decode()
    assert outs[1].decode().endswith(shown + " is busy\n"), outs[1]


def test_timeout_message_shows_a_hostile_path_escaped(tmp_path):
    """heavylock.Timeout's message carried the lock path raw (ESC, BEL, a
    newline) to whatever printed the exception."""
    heavylock = pytest.importorskip("heavylock")
    lock = os.path.join(os.fsencode(tmp_path), b"a\x1b[31m\x07\nb.lock")
    open(lock, "wb").close()
    p = subprocess.Popen([b"flock", lock, b"sleep", b"60"], start_new_session=True)
    try:
        wait_for(lambda: heavylock.status(os.fsdecode(lock))["held"], what="flock(1) to hold")
        with pytest.raises(heavylock.Timeout) as info:
            with heavylock.open_lock(os.fsdecode(lock), timeout=0.1):
                pass
    finally:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
    assert "a\\x1b[31m\\x07\\x0ab.lock" in str(info.value), str(info.value)
    assert not CONTROL.search(str(info.value).encode()), str(info.value)
    assert info.value.path == os.fsdecode(lock)


def test_python_status_never_raises_on_hostile_records(tmp_path, held_by_flock):
    heavylock = pytest.importorskip("heavylock")
    native = pytest.importorskip("heavylock._native")
    lock, p = held_by_flock
    with open(lock, "r+b") as f:
        f.write(hostile_record(p.pid, start="0"))
    st = heavylock.status(str(lock))  # no UnicodeDecodeError
    assert st["held"]
    native.describe_holder(str(lock))
    stale = tmp_path / "stale.lock"
    stale.write_bytes(hostile_record(999999999, start="5"))
    st = heavylock.status(str(stale))
    assert st["record"] is not None and "\x1b" not in st["record"]["label"]
    for v in st["record"].values():
        if isinstance(v, str):
            v.encode("utf-8")  # round-trips: no lone surrogates


@pytest.mark.parametrize("kind", ["fifo", "socket", "dir", "device", "dangling"])
def test_lock_path_kinds_refused(cli, tmp_path, kind):
    p = tmp_path / f"{kind}.lock"
    if kind == "fifo":
        os.mkfifo(p)
    elif kind == "socket":
        import socket
        s = socket.socket(socket.AF_UNIX)
        s.bind(str(p))
    elif kind == "dir":
        p.mkdir()
    elif kind == "device":
        p = "/dev/null"
    else:
        p.symlink_to(tmp_path / "nowhere")
    r = run(cli, "run", "--lock", p, "--", "true", timeout=10)
    assert r.returncode == 66, r.stderr
    assert b"symbolic link" in r.stderr or b"not a regular file" in r.stderr
    assert not (tmp_path / "nowhere").exists()


def test_name_too_long_and_newline_in_name(cli, tmp_path):
    r = run(cli, "run", "--lock", tmp_path / ("n" * 300), "--", "true")
    assert r.returncode == 66 and b"File name too long" in r.stderr
    nl = tmp_path / "new\nline.lock"
    assert run(cli, "run", "--lock", nl, "--", "true").returncode == 0
    text, data = check_outputs(cli, nl)
    assert data["path"] == str(nl)


def test_bad_environment_values(cli, tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("HEAVYLOCK_PATH", "LOCAL_MODEL_PATH")}
    for var, value, says in [
        ("HEAVYLOCK_PATH", "", b"HEAVYLOCK_PATH is set but empty"),
        ("HEAVYLOCK_PATH", str(tmp_path), b"is a directory"),
        ("HEAVYLOCK_PATH", "/" + "x" * 5000, b"HEAVYLOCK_PATH is 5001 bytes long"),
        ("LOCAL_MODEL_PATH", "", b"LOCAL_MODEL_PATH is set but empty"),
        ("LOCAL_MODEL_PATH", str(tmp_path), b"is a directory"),
    ]:
        r = run(cli, "run", "--", "true", env={**env, var: value}, cwd=tmp_path)
        assert r.returncode == 64, (var, value, r.stderr)
        assert says in r.stderr, (var, value, r.stderr)


@pytest.mark.parametrize("args,says", [
    (["-w", "nan"], b"'nan'"), (["-w", ""], b"''"), (["-w", "1s"], b"'1s'"),
    (["-E", "-1"], b"'-1'"), (["-E", "256"], b"'256'"), (["--bogus"], b"bad usage"),
])
def test_bad_option_values(cli, tmp_path, args, says):
    r = run(cli, "run", *args, "--lock", tmp_path / "x.lock", "--", "true")
    assert r.returncode == 64 and says in r.stderr and b"Try 'heavylock --help'" in r.stderr


def test_unknown_scheme_and_empty_lock_are_usage_errors_everywhere(cli, tmp_path):
    """doctor diagnosed redis://... as "bad PostgreSQL URL ... missing '='"
    (run and status say: no known lock server); an empty --lock was
    "cannot open lock file : Invalid argument" (66) for run and "free" for
    status, while HEAVYLOCK_PATH="" is a usage error."""
    doc = run(cli, "doctor", "redis://u:pw@h/x", cwd=tmp_path)
    assert doc.returncode == 64, doc
    assert (b"redis://u:***@h/x is a URL of no known lock server; supported: postgresql://"
            in doc.stdout), doc.stdout
    assert b"PostgreSQL" not in doc.stdout and b"pw" not in doc.stdout
    for args in (["run", "--lock", "", "--", "true"], ["status", "--lock", ""]):
        r = run(cli, *args, cwd=tmp_path)
        assert r.returncode == 64 and b"--lock is empty" in r.stderr, (args, r)
    doc = run(cli, "doctor", "", cwd=tmp_path)
    assert doc.returncode == 64 and b"the lock path is empty" in doc.stdout, doc
    assert os.listdir(tmp_path) == []


def test_corrupt_gguf(cli, tmp_path):
    cases = {
        "empty": b"", "magic": b"GGML" + b"\0" * 20,
        "version": b"GGUF" + (9).to_bytes(4, "little") + b"\0" * 16,
        "huge-count": b"GGUF" + (3).to_bytes(4, "little") + b"\xff" * 16,
        "huge-string": b"GGUF" + (3).to_bytes(4, "little") + (0).to_bytes(8, "little")
        + (1).to_bytes(8, "little") + b"\xff" * 8,
    }
    for name, data in cases.items():
        f = tmp_path / f"{name}.gguf"
        f.write_bytes(data)
        r = run(cli, "gguf", f, timeout=10)
        assert r.returncode == 66 and b"not in the expected format" in r.stderr, name


@pytest.fixture
def tiny_tmpfs(tmp_path):
    """A 64 KiB tmpfs (root only: mount(2)); fills up and turns read-only on demand."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)])


def test_full_and_readonly_file_system(cli, tiny_tmpfs):
    lock = tiny_tmpfs / "x.lock"
    lock.write_bytes(b"")
    with open(tiny_tmpfs / "fill", "wb") as f:  # fill it up
        try:
            f.write(b"\0" * (1 << 20))
        except OSError:
            pass
    r = run(cli, "run", "--label", "L" * 400, "--lock", lock, "--", "true")
    assert r.returncode == 0, r.stderr  # disk full costs the record, not the lock
    assert lock.stat().st_size == 0      # and no half record is left behind
    r = run(cli, "doctor", lock)
    assert b"tmpfs" in r.stdout and b"flock test   ok" in r.stdout
    subprocess.run(["mount", "-o", "remount,ro", str(tiny_tmpfs)], check=True)
    assert run(cli, "run", "--lock", lock, "--", "true").returncode == 0  # existing: read-only fd
    r = run(cli, "run", "--lock", tiny_tmpfs / "new.lock", "--", "true")
    assert r.returncode == 73 and b"Read-only file system" in r.stderr


def test_other_users_file(cli):
    # A lock file owned by someone else in a sticky, world-writable directory
    # (a shared /tmp), read-only to us: locks, writes nothing.
    import shutil
    import tempfile
    d = tempfile.mkdtemp(prefix="hl-sticky-", dir="/tmp")
    os.chmod(d, 0o1777)
    lock = os.path.join(d, "x.lock")
    open(lock, "wb").close()
    os.chown(lock, 65534, 65534)
    os.chmod(lock, 0o444)
    r = subprocess.run(["setpriv", "--reuid=65533", "--regid=65533", "--clear-groups", cli,
                        "run", "--lock", str(lock), "--", "true"], capture_output=True)
    if b"setpriv" in r.stderr and r.returncode == 127:
        pytest.skip("setpriv is not available")
    try:
        assert r.returncode == 0, r.stderr
        assert os.path.getsize(lock) == 0
    finally:
        shutil.rmtree(d)


# A live slot entry written behind heavylock's back (anyone who can write
# PATH.slots): exclusive, so every newcomer waits behind it, with a label
# of terminal escapes.  The helper holds a shared flock on the lock file and
# the entry's OFD byte lock, as a real slot holder does, until killed.
FORGE_SLOT = r"""
import fcntl, os, struct, sys, time
lock, label = sys.argv[1], sys.argv[2].encode("utf-8", "surrogateescape")
fd = os.open(lock, os.O_RDWR)
fcntl.flock(fd, fcntl.LOCK_SH)
t = os.open(lock + ".slots", os.O_RDWR)
# entry_t: state, exclusive, pid, start, ticket, weight, baseline_rss, budget,
# slots, pad, since, weight_source[16], host[64], label[512]
e = struct.pack("=IIqQQQQQiid16s64s512s", 2, 1, os.getpid(), 0, 0, 0, 0, 0, 1, 0,
                time.time(), b"declared", b"h\x1b]0;host\x07", label)
os.pwrite(t, e, 4096)
fcntl.fcntl(t, fcntl.F_OFD_SETLK, struct.pack("hhxxxxqqixxxx", fcntl.F_WRLCK, 0, 4096, 1, 0))
print("ready", flush=True)
time.sleep(120)
"""
EVIL_LABEL = "\x1b]0;owned\x07\x1b[2J\u009b31mred\x7f"


@pytest.fixture
def forged_slot_holder(cli, tmp_path):
    lock = tmp_path / "models" / ".llm_load.lock"
    lock.parent.mkdir()
    assert run(cli, "run", "--lock", lock, "--slots", "2", "--", "true").returncode == 0
    p = subprocess.Popen([sys.executable, "-c", FORGE_SLOT, str(lock), EVIL_LABEL],
                         stdout=subprocess.PIPE, start_new_session=True)
    try:
        assert p.stdout.readline() == b"ready\n"
        yield lock, p
    finally:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()


def test_slot_label_escapes_never_reach_python_or_the_plugin(cli, pytester, monkeypatch,
                                                             forged_slot_holder):
    # Bug: the slot table's label went out raw through status() and the
    # plugin's wait notice and timeout message (ESC ] 0 ; ... BEL ESC [ 2 J).
    heavylock = pytest.importorskip("heavylock")
    lock, p = forged_slot_holder
    st = heavylock.status(str(lock))
    (h,) = st["holders"]
    assert h["pid"] == p.pid and "owned" in h["label"] and "red" in h["label"]
    for text in (h["label"], h["host"], heavylock.describe_holder(str(lock))):
        assert not CONTROL.search(text.encode()), repr(text)
    for k in ("RUN_HEAVY_INTEGRATION", "LOCAL_MODEL_PATH", "HEAVYLOCK_PATH", "HEAVYLOCK_URL",
              "HEAVYLOCK_BACKEND", "HEAVYLOCK_TIMEOUT", "HEAVYLOCK_SLOTS", "PYTEST_ADDOPTS"):
        monkeypatch.delenv(k, raising=False)
    pytester.makepyfile(test_w="""
        import pytest
        @pytest.mark.llm
        def test_heavy(): pass
    """)
    for slots in ("1", "2"):
        r = pytester.runpytest_subprocess(f"--heavylock-path={lock}", f"--heavylock-slots={slots}",
                                          "--heavylock-timeout=2.5")
        r.assert_outcomes(errors=1)
        out = "\n".join(r.outlines + r.errlines)
        assert "waiting for" in out and "gave up after waiting 2.5 s" in out, out
        assert "owned" in out, out  # the label is shown, cleaned
        assert not CONTROL.search(out.replace("\n", "").encode()), repr(out)


# Another user who can read PATH.slots (created 0644) takes a read lock on
# its byte 0, the admission lock, through a read-only descriptor, and keeps it.
HOLD_ADMISSION = r"""
import fcntl, os, struct, sys, time
fd = os.open(sys.argv[1], os.O_RDONLY)
fcntl.fcntl(fd, fcntl.F_OFD_SETLK, struct.pack("hhxxxxqqixxxx", fcntl.F_RDLCK, 0, 0, 1, 0))
print("ready", flush=True)
time.sleep(120)
"""


@pytest.fixture
def admission_table_held_by_nobody(cli):
    import shutil
    import tempfile
    d = tempfile.mkdtemp(prefix="hl-admit-", dir="/tmp")
    os.chmod(d, 0o755)
    lock = os.path.join(d, "x.lock")
    assert run(cli, "run", "--lock", lock, "--slots", "2", "--", "true").returncode == 0
    assert os.stat(lock + ".slots").st_mode & 0o777 == 0o644
    p = subprocess.Popen(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
                          "/usr/bin/python3", "-c", HOLD_ADMISSION, lock + ".slots"],
                         stdout=subprocess.PIPE, start_new_session=True)
    try:
        assert p.stdout.readline() == b"ready\n", "nobody could not lock the table"
        yield lock, p
    finally:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
        shutil.rmtree(d)


@pytest.mark.parametrize("how,bound", [("slots -n", (0, 3)), ("slots -w 2", (2, 6)),
                                       ("exclusive -w 1 behind flock(1)", (1, 5))])
def test_stuck_admission_table_honours_n_and_w(cli, admission_table_held_by_nobody, how, bound):
    # Bug: the admission byte was taken with a blocking F_OFD_SETLKW: all
    # three hung for as long as the other user held it.
    lock, p = admission_table_held_by_nobody
    args = {"slots -n": ["--slots", "2", "-n"], "slots -w 2": ["--slots", "2", "-w", "2"],
            "exclusive -w 1 behind flock(1)": ["-w", "1"]}[how]
    blocker = None
    if how.startswith("exclusive"):
        blocker = subprocess.Popen(["flock", lock, "sleep", "30"], start_new_session=True)
        ino = f":{os.stat(lock).st_ino} "
        wait_for(lambda: any(ino in ln and "FLOCK" in ln for ln in open("/proc/locks")),
                 what="flock(1) to hold")
    try:
        t0 = time.monotonic()
        r = run(cli, "run", "--lock", lock, *args, "--", "true", timeout=30)
        took = time.monotonic() - t0
    finally:
        if blocker:
            os.killpg(blocker.pid, signal.SIGKILL)
            blocker.wait()
    assert r.returncode == 1, r.stderr
    assert bound[0] <= took < bound[1], (took, r.stderr)
    assert f"admission table {lock}.slots locked by pid {p.pid}".encode() in r.stderr, r.stderr


def test_full_slot_table_says_so(cli, tmp_path):
    # Bug: 1024 live entries made `run --slots` exit 73 "No space left on
    # device".  One OFD lock over every entry's byte looks like 1024 clients.
    import fcntl
    import struct
    lock = str(tmp_path / "x.lock")
    assert run(cli, "run", "--lock", lock, "--slots", "2", "--", "true").returncode == 0
    fd = os.open(lock + ".slots", os.O_RDWR)
    try:
        fcntl.fcntl(fd, fcntl.F_OFD_SETLK,
                    struct.pack("hhxxxxqqixxxx", fcntl.F_WRLCK, 0, 4096, 1024 * 1024, 0))
        r = run(cli, "run", "--lock", lock, "--slots", "2", "-w", "5", "--", "true", timeout=30)
        assert r.returncode == 75, r.stderr  # EX_TEMPFAIL: try again later
        assert b"slot table full (1024 holders)" in r.stderr, r.stderr
        assert b"No space left" not in r.stderr
    finally:
        os.close(fd)
    assert run(cli, "run", "--lock", lock, "--slots", "2", "-n", "--", "true").returncode == 0


def test_hostile_lock_path_never_reaches_the_plugins_output(pytester, monkeypatch, tmp_path):
    """The plugin's "lock:" summary line, its waiting notice and its
    start-up errors showed the lock path raw (ESC, BEL, a newline, a byte
    that is not UTF-8 from HEAVYLOCK_PATH); now as \\xHH, as the CLI does."""
    pytest.importorskip("heavylock")
    for k in ("RUN_HEAVY_INTEGRATION", "LOCAL_MODEL_PATH", "HEAVYLOCK_PATH", "HEAVYLOCK_URL",
              "HEAVYLOCK_BACKEND", "HEAVYLOCK_TIMEOUT", "HEAVYLOCK_SLOTS", "PYTEST_ADDOPTS"):
        monkeypatch.delenv(k, raising=False)
    raw = os.path.join(os.fsencode(tmp_path), b"a\x1b]0;pwn\x07\nb\xff.lock")
    shown = os.fsdecode(tmp_path) + "/a\\x1b]0;pwn\\x07\\x0ab\\xff.lock"
    pytester.makepyfile(test_w="""
        import pytest
        @pytest.mark.llm
        def test_heavy(): pass
    """)
    monkeypatch.setenv("HEAVYLOCK_PATH", os.fsdecode(raw))
    report = tmp_path / "r.json"
    r = pytester.runpytest_subprocess("--heavylock-run-heavy", "-rA", f"--heavylock-report={report}")
    r.assert_outcomes(passed=1)
    out = "\n".join(r.outlines + r.errlines)
    assert f"lock: {shown} (from HEAVYLOCK_PATH" in out, out
    assert not CONTROL.search(out.replace("\n", "").encode("utf-8", "surrogateescape")), repr(out)
    assert json.loads(report.read_text())["lock"] == shown
    # a start-up error about that path: its folder cannot be made
    monkeypatch.setenv("HEAVYLOCK_PATH", os.fsdecode(os.path.join(raw, b"x.lock")))
    r = pytester.runpytest_subprocess("--heavylock-run-heavy")
    assert r.ret == pytest.ExitCode.USAGE_ERROR
    err = "\n".join(r.errlines)
    assert f"the lock {shown}/x.lock (from HEAVYLOCK_PATH) cannot be used" in err, err
    assert not CONTROL.search(err.replace("\n", "").encode("utf-8", "surrogateescape")), err
