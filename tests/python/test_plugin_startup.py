"""A lock target that cannot work is a usage error at start-up, naming the
value and where it came from, before any test runs (issue 16); one that
breaks during the run fails the test with one line; the summary tells the
heavy tests that did not take the lock apart."""

import os
import subprocess
import textwrap

import pytest

from test_plugin import env  # noqa: F401 (fixture)
from test_plugin_project import held_by_pid
from helpers import wait_for

pytest_plugins = ["pytester"]

RAN = """
    import os, pytest
    @pytest.mark.llm
    def test_heavy():
        open(os.environ["IV_LOG"], "a").write("ran\\n")
"""


def refused(pytester, env, *args):
    """Run; assert a usage error before any test ran; return stderr."""
    pytester.makepyfile(test_h=textwrap.dedent(RAN))
    r = pytester.runpytest_subprocess(*args)
    assert r.ret == pytest.ExitCode.USAGE_ERROR, r.stdout.str() + r.stderr.str()
    assert not env.exists()  # no test ran
    return r.stderr.str()


def test_a_directory_as_the_lock_path(pytester, env, tmp_path):
    err = refused(pytester, env, f"--heavylock-path={tmp_path}")
    assert (f"the lock {tmp_path} (from --heavylock-path) cannot be used: it is a directory; "
            f"name the lock file itself, e.g. {tmp_path}/.llm_load.lock") in err


def test_a_folder_that_cannot_be_created(pytester, env, monkeypatch, tmp_path):
    (tmp_path / "afile").write_text("")
    monkeypatch.setenv("HEAVYLOCK_PATH", str(tmp_path / "afile" / "models" / "x.lock"))
    err = refused(pytester, env)
    assert (f"(from HEAVYLOCK_PATH) cannot be used: {tmp_path}/afile is not a directory, so the "
            "lock's folder cannot be created there") in err


@pytest.mark.parametrize("what", ["folder", "file"])
def test_a_read_only_folder_or_file(pytester, env, monkeypatch, tmp_path, what):
    """chattr +i: read-only even for root (the tests run as root here)."""
    ro = tmp_path / "ro"
    ro.mkdir()
    lock = ro / ".llm_load.lock"
    if what == "file":
        lock.write_text("")
    target = lock if what == "file" else ro
    if subprocess.run(["chattr", "+i", str(target)], capture_output=True).returncode:
        pytest.skip("chattr +i is not permitted here")
    try:
        # the fcntl backend opens the file for writing; the native one locks
        # it read-only (test_a_lock_file_only_readable_is_used_by_the_native_backend)
        err = refused(pytester, env, f"--heavylock-path={lock}", "--heavylock-backend=fcntl")
    finally:
        subprocess.run(["chattr", "-i", str(target)], check=True)
    said = ("it cannot be opened for writing" if what == "file"
            else f"cannot create the lock file in {ro}: it is read-only")
    assert f"the lock {lock} (from --heavylock-path) cannot be used: {said}" in err


def test_filelock_backend_without_filelock(pytester, env, monkeypatch, tmp_path):
    hide = tmp_path / "hide"
    hide.mkdir()
    (hide / "filelock.py").write_text("raise ImportError('No module named filelock')\n")
    monkeypatch.setenv("PYTHONPATH", str(hide))
    monkeypatch.setenv("HEAVYLOCK_BACKEND", "filelock")
    err = refused(pytester, env)
    assert ("HEAVYLOCK_BACKEND='filelock': the filelock package is not installed "
            "(pip install filelock)") in err


def test_an_unreachable_lock_server(pytester, env, monkeypatch):
    monkeypatch.setenv("HEAVYLOCK_URL", "postgresql://u:s3cret@127.0.0.1:1/db?name=x")
    err = refused(pytester, env)
    assert ("the lock postgresql://u:***@127.0.0.1:1/db?name=x (from HEAVYLOCK_URL) cannot be "
            "used: ") in err and "Connection refused" in err
    assert "s3cret" not in err


def test_slots_auto_on_a_server_without_budget_hides_the_password(pytester, env, monkeypatch):
    """The usage error for slots auto without a budget on a server named the
    URL unmasked (its password on the terminal)."""
    monkeypatch.setenv("HEAVYLOCK_URL", "postgresql://u:s3cret@127.0.0.1:1/db?name=x")
    err = refused(pytester, env, "--heavylock-slots=auto")
    assert ("slots auto on the lock server postgresql://u:***@127.0.0.1:1/db?name=x (from "
            "HEAVYLOCK_URL) need --heavylock-budget") in err
    assert "s3cret" not in err


@pytest.fixture
def readonly_dir(tmp_path):
    """A read-only tmpfs (root only: mount(2)): even root cannot write there."""
    mnt = tmp_path / "ro"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k,ro", "tmpfs", str(mnt)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)])


@pytest.mark.parametrize("option,name", [("report", "r.json"), ("timeline", "t.svg")])
def test_an_output_in_a_read_only_folder(pytester, env, tmp_path, readonly_dir, option, name):
    """Every test ran (hours of model loads) and only then the run failed
    with "could not write the report ...: Read-only file system"."""
    err = refused(pytester, env, f"--heavylock-path={tmp_path}/x.lock",
                  f"--heavylock-{option}={readonly_dir}/{name}")
    assert (f"--heavylock-{option}='{readonly_dir}/{name}': its folder {readonly_dir} is "
            "read-only for this user") in err


def test_a_lock_file_only_readable_is_used_by_the_native_backend(pytester, env, readonly_dir):
    """The start-up check refused an existing lock file this user cannot
    write ("cannot be opened for writing": another user's 0644 file, a
    read-only file system), which the native backend locks through a
    read-only descriptor as the CLI does: a shared lock stopped every run."""
    lock = readonly_dir / "x.lock"
    subprocess.run(["mount", "-o", "remount,rw", str(readonly_dir)], check=True)
    lock.write_bytes(b"")
    subprocess.run(["mount", "-o", "remount,ro", str(readonly_dir)], check=True)
    pytester.makepyfile(test_h=textwrap.dedent(RAN))
    r = pytester.runpytest_subprocess(f"--heavylock-path={lock}", "--heavylock-backend=native",
                                      "--heavylock-run-heavy")
    assert r.ret == pytest.ExitCode.OK, r.stdout.str() + r.stderr.str()
    assert env.read_text() == "ran\n"
    env.unlink()
    err = refused(pytester, env, f"--heavylock-path={lock}", "--heavylock-backend=fcntl")
    assert "cannot be opened for writing by this user" in err


def test_outputs_replace_a_planted_symlink_never_follow_it(pytester, env, tmp_path):
    """The report and timeline were opened with open(path, "w"): a symbolic
    link planted at the path (a shared folder) made the run truncate and
    overwrite the file it points to."""
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    out = pytester.path / "out"
    out.mkdir()
    for name in ("r.json", "t.svg"):
        (out / name).symlink_to(victim)
    pytester.makepyfile(test_h=textwrap.dedent(RAN))
    r = pytester.runpytest_subprocess(f"--heavylock-path={tmp_path}/x.lock",
                                      f"--heavylock-report={out}/r.json",
                                      f"--heavylock-timeline={out}/t.svg")
    assert r.ret == pytest.ExitCode.OK, r.stdout.str() + r.stderr.str()
    assert victim.read_text() == "precious\n"
    for name in ("r.json", "t.svg"):
        assert not (out / name).is_symlink() and (out / name).stat().st_size > 0
    assert sorted(os.listdir(out)) == ["r.json", "t.svg"]  # no temporary file left


def test_a_fast_run_with_a_good_target_creates_nothing(pytester, env, tmp_path):
    """The start-up check opens nothing: the lock's folder appears only when
    a heavy test takes the lock."""
    pytester.makepyfile("def test_a(): pass\n")
    r = pytester.runpytest_subprocess(f"--heavylock-path={tmp_path}/new/dir/x.lock")
    r.assert_outcomes(passed=1)
    assert not (tmp_path / "new").exists()


def test_a_target_that_breaks_during_the_run_fails_the_test_in_one_line(pytester, env):
    pytester.makepyfile(test_b="""
        import os, shutil, pytest
        def test_break_it():
            shutil.rmtree("models", ignore_errors=True)
            open("models", "w").close()   # the lock's folder is a file now
        @pytest.mark.llm
        def test_heavy(): pass
    """)
    r = pytester.runpytest_subprocess("-p", "no:randomly")
    r.assert_outcomes(passed=1, errors=1)
    out = r.stdout.str()
    r.stdout.fnmatch_lines([f"heavylock: cannot take the lock {pytester.path}/models/"
                            ".llm_load.lock (from default): Not a directory*",
                            "heavy tests were selected but none took the lock: 1 could not "
                            "take the lock (errors)"])
    assert "Traceback" not in out and "_native" not in out


def test_the_summary_tells_skipped_timed_out_and_errors_apart(pytester, env):
    pytester.makepyfile(test_s="""
        import pytest
        def test_needs_model(local_model_path): pass
        @pytest.mark.llm
        def test_waits(): pass
        @pytest.mark.llm(mem="lots")
        def test_bad_weight(): pass
    """)
    lock = pytester.path / "models" / ".llm_load.lock"
    lock.parent.mkdir()
    holder = subprocess.Popen(["flock", str(lock), "sleep", "60"], start_new_session=True)
    try:
        wait_for(lambda: held_by_pid(lock) == holder.pid, what="holder")
        r = pytester.runpytest_subprocess("--heavylock-timeout=0.3")
    finally:
        os.killpg(holder.pid, 9)
        holder.wait()
    r.assert_outcomes(skipped=1, errors=2)
    r.stdout.fnmatch_lines(["heavy tests were selected but none took the lock: 1 skipped (not "
                            "opted in, or no LOCAL_MODEL_PATH), 1 timed out waiting "
                            "(--heavylock-timeout), 1 could not "
                            "take the lock (errors)"])
