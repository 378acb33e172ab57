"""What the first real project hit (issue 7), each reproduced as a pytester
project: heavy work at import time, models left resident, a half-migrated
conftest that takes the same lock, a model not downloaded yet, the strict
variant of the policy.  Exclusion is proven from intervals the generated
code records itself."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from helpers import overlaps, wait_for
from test_plugin import env, explain, intervals  # noqa: F401 (fixture)

pytest_plugins = ["pytester"]

HEAVY_IMPORT = """
    import mmap, os, time

    t0 = time.time()
    with open("models/tiny.gguf", "rb") as f:  # "the model", mapped as llama.cpp does
        MAPPED = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    MODEL = bytearray(48 * 2**20)            # "the weights": touched, so resident
    for i in range(0, len(MODEL), 4096):
        MODEL[i] = 1
    time.sleep(0.4)                           # "the load"
    with open(os.environ["IV_LOG"], "a") as f:
        f.write(f"import {t0!r} {time.time()!r} {os.getpid()}\\n")

    def test_generate():
        assert MODEL[0] == 1
"""


def test_heavy_imports_are_serialized_and_named(pytester, env):
    pytest.importorskip("xdist")
    pytester.mkpydir("tests")
    pytester.mkpydir("tests/scripts").joinpath("test_generate.py").write_text(
        textwrap.dedent(HEAVY_IMPORT))
    pytester.makepyfile(test_light="def test_light(): pass\n")
    model = pytester.path / "models" / "tiny.gguf"
    model.parent.mkdir()
    model.write_bytes(b"GGUF" + bytes(4096))
    report = pytester.path / "report.json"
    for run in (1, 2):  # a module that loaded a model stays under the lock
        r = pytester.runpytest_subprocess("-n", "3", "-p", "xdist",
                                          f"--heavylock-report={report}")
        r.assert_outcomes(passed=2)
        iv = intervals(env, "import")
        assert len(iv) == 3 * run and len({pid for *_, pid in iv}) == 3 * run  # every worker
        assert overlaps(iv) == []                                    # one at a time
        r.stdout.fnmatch_lines([
            f"importing tests/scripts/test_generate.py loaded the model {model} at import time "
            "(took 0.* s and added 4? MiB in gw0, gw1, gw2), under the lock, one process at "
            "a time; each process that imports it keeps what it loaded*"])
        imports = [e for e in json.loads(report.read_text())["events"] if e["kind"] == "import"]
        assert len(imports) == 3 and all(e["rule"] == "file under tests/scripts/" for e in imports)
        assert all(e["rss_growth"] >= 40 * 2**20 and e["acquired"] for e in imports)


def test_a_heavy_import_that_cannot_get_the_lock_is_not_run(pytester, env):
    """--heavylock-timeout bounds an import's wait too; the module then fails
    to collect, saying why, and is NOT imported without the lock."""
    pytester.mkpydir("tests")
    pytester.mkpydir("tests/scripts").joinpath("test_generate.py").write_text(
        textwrap.dedent(HEAVY_IMPORT))
    lock = pytester.path / "models" / ".llm_load.lock"
    lock.parent.mkdir()
    holder = subprocess.Popen(["flock", str(lock), "sleep", "60"], start_new_session=True)
    try:
        wait_for(lambda: held_by_pid(lock) == holder.pid, what="holder")
        r = pytester.runpytest_subprocess("--heavylock-timeout=0.5")
    finally:
        os.killpg(holder.pid, 9)
        holder.wait()
    assert r.ret == pytest.ExitCode.INTERRUPTED  # a collection error
    r.stdout.fnmatch_lines(["*ERROR collecting tests/scripts/test_generate.py*",
                            f"*gave up after waiting 0.5 s for {lock}, held by pid {holder.pid}*"])
    assert intervals(env, "import") == []  # never imported without the lock


def held_by_pid(lock):
    from heavylock import status
    st = status(str(lock))
    return st["holder_pid"] if st["held"] else 0


def test_import_time_token_takes_the_lock_but_import_lines_do_not(pytester, env, cli):
    """A module whose import-time code names a token imports under the lock;
    one that only imports the class (or uses it inside functions) does not."""
    status = f"""
        import subprocess
        HELD = subprocess.run([{cli!r}, "status"], capture_output=True).returncode == 1
    """
    pytester.makepyfile(
        test_top=textwrap.dedent(status) + textwrap.dedent("""
            USE_LOCAL_LLM = True
            def test_top(): assert HELD
        """),
        test_named=textwrap.dedent('"""Tests of LocalLLMClient (a docstring)."""') +
        textwrap.dedent(status) + textwrap.dedent("""
            from os import path as LocalLLMClient
            def test_named():
                LocalLLMClient
                assert not HELD
        """))
    r = pytester.runpytest_subprocess()
    r.assert_outcomes(passed=2)


def test_resident_memory_after_release_is_named(pytester, env):
    pytester.makepyfile(test_r="""
        import pytest

        KEEP = []   # a cache in a module global: the model stays mapped

        def load():
            m = bytearray(100 * 2**20)
            for i in range(0, len(m), 4096):
                m[i] = 1
            return m

        @pytest.mark.llm
        def test_keeps_model():
            KEEP.append(load())

        @pytest.mark.llm
        def test_frees_model():
            m = load()
            del m
    """)
    pytester.makepyfile(test_s="""
        import pytest

        @pytest.mark.llm
        def test_elsewhere():
            pass
    """)
    report = pytester.path / "report.json"
    # heavy tests in two processes (a file per worker): the kept copy costs one more
    spread = ("-p", "xdist", "-n", "2", "--dist", "loadfile", "--heavylock-lane=off")
    r = pytester.runpytest_subprocess(*spread, f"--heavylock-report={report}")
    r.assert_outcomes(passed=3)
    events = {e["nodeid"]: e for e in json.loads(report.read_text())["events"]}
    assert len({e["worker"] for e in events.values()}) == 2, events
    r.stdout.fnmatch_lines(["test_r.py::test_keeps_model [[]gw?[]] left 1?? MiB resident after "
                            "release: the next heavy test on another worker adds a copy*"])
    assert "test_frees_model [gw" not in r.stdout.str().split("resident after")[-1]
    assert "test_frees_model" not in "".join(
        ln for ln in r.stdout.lines if "resident after release" in ln)
    assert events["test_r.py::test_keeps_model"]["resident"] >= 90 * 2**20
    assert events["test_r.py::test_frees_model"]["resident"] < 64 * 2**20
    # one process runs every heavy test (no xdist, or a heavy lane): the model
    # it keeps is loaded once, which is no copy to warn about
    r = pytester.runpytest_subprocess()
    r.assert_outcomes(passed=3)
    assert "resident after release" not in r.stdout.str()
    # the threshold is a setting; 0 turns the warning off; a bad value names its source
    r = pytester.runpytest_subprocess(*spread, "--heavylock-resident-warn=0")
    assert "left 1" not in r.stdout.str()
    pytester.makeini("[pytest]\nheavylock_resident_warn = lots\n")
    r = pytester.runpytest_subprocess()
    assert r.ret == pytest.ExitCode.USAGE_ERROR
    r.stderr.fnmatch_lines(["*ini option heavylock_resident_warn: invalid size 'lots'*"])


OLD_CONFTEST = """
    import os
    import filelock

    os.makedirs("models", exist_ok=True)
    _LOCK = filelock.FileLock("models/.llm_load.lock")

    def pytest_runtest_setup(item):
        if item.get_closest_marker("llm"):
            _LOCK.acquire()

    def pytest_runtest_teardown(item):
        if item.get_closest_marker("llm"):
            _LOCK.release()
"""


def test_old_filelock_conftest_fails_at_once_instead_of_hanging(pytester, env):
    pytest.importorskip("filelock")
    pytester.makeconftest(OLD_CONFTEST)
    pytester.makepyfile(test_h="""
        import pytest
        @pytest.mark.llm
        def test_heavy(): pass
        def test_light(): pass
    """)
    r = pytester.runpytest_subprocess(timeout=20)  # before the fix: waits for itself forever
    r.assert_outcomes(passed=1, errors=1)
    r.stdout.fnmatch_lines([
        f"*{pytester.path}/models/.llm_load.lock is held by pid {'*'}: that is this very "
        "process, through another handle (an old conftest hook*Remove the old locking code*"])


def test_holder_in_the_parent_chain_fails_at_once(pytester, env, cli):
    pytester.makepyfile(test_h="""
        import pytest
        @pytest.mark.llm
        def test_heavy(): pass
    """)
    lock = pytester.path / "models" / ".llm_load.lock"
    lock.parent.mkdir()  # an explicit --lock into a missing directory is an error, as in flock(1)
    p = subprocess.Popen([cli, "run", "--lock", str(lock), "--label", "outer", "--",
                          sys.executable, "-m", "pytest", "-p", "no:cacheprovider"],
                         cwd=pytester.path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         text=True, start_new_session=True)
    try:
        out, _ = p.communicate(timeout=20)  # before the fix: the two wait for each other
    finally:
        try:
            os.killpg(p.pid, 9)  # the whole group, should the pytest below it hang
        except ProcessLookupError:
            pass
        p.wait()
    r = subprocess.CompletedProcess(p.args, p.returncode, out, "")
    assert r.returncode == 1, r.stdout
    assert "that is a parent of this process" in r.stdout
    assert "(outer)" in r.stdout  # the holder described as everywhere else


def test_missing_model_does_not_stop_a_fast_run(pytester, env, monkeypatch, tmp_path):
    pytester.makepyfile(test_m="""
        import pytest
        @pytest.mark.llm
        def test_marked(): pass
        def test_model(local_model_path): pass
        def test_light(): pass
    """)
    model = tmp_path / "future" / "Phi-3-mini-4k-instruct-q4.gguf"  # not downloaded yet
    monkeypatch.setenv("LOCAL_MODEL_PATH", str(model))
    r = pytester.runpytest_subprocess("-rs")
    assert r.ret == pytest.ExitCode.OK
    r.assert_outcomes(passed=2, skipped=1)
    assert (model.parent / ".llm_load.lock").is_file()  # the lock went next to the model
    r.stdout.fnmatch_lines([f"lock: {model.parent}/.llm_load.lock (from LOCAL_MODEL_PATH*"])
    # opted in: only what needs the model says the file is missing
    monkeypatch.setenv("RUN_HEAVY_INTEGRATION", "1")
    r = pytester.runpytest_subprocess()
    r.assert_outcomes(passed=2, errors=1)
    r.stdout.fnmatch_lines([f"heavylock: LOCAL_MODEL_PATH='{model}' does not exist*",
                            "*ERROR at setup of test_model*",
                            f"LOCAL_MODEL_PATH='{model}' does not exist*"])


def test_strict_preset_leaves_mocked_token_tests_light(pytester, env):
    pytester.makepyfile(test_mocked="""
        import pytest
        class FakeProvider: pass
        def test_mocked_client():
            client = "LocalLLMClient"   # a mocked client: no model is loaded
        def test_model(local_model_path): pass
        @pytest.mark.llm
        def test_marked(): pass
    """)
    pytester.mkpydir("tests")
    pytester.mkpydir("tests/scripts").joinpath("test_s.py").write_text("def test_s(): pass\n")
    r, v = explain(pytester)
    assert v["test_mocked_client"][0] and v["test_s"][0] and v["test_model"][0]
    for rules in ("marker env", "strict", "marker,env"):
        pytester.makeini(f"[pytest]\nheavylock_rules = {rules}\n")
        r, v = explain(pytester)
        assert r.ret == 0
        assert not v["test_mocked_client"][0] and not v["test_s"][0]
        assert not v["test_model"][0] and v["test_marked"][0]
    r, v = explain(pytester, "--heavylock-run-heavy")
    assert v["test_mocked_client"][0]  # the env rule still applies
    r, v = explain(pytester, "--heavylock-rules=token")
    assert v["test_mocked_client"][0] and not v["test_marked"][0]  # command line wins
    pytester.makeini("[pytest]\nheavylock_tokens =\nheavylock_paths =\n")  # the empty lists
    r, v = explain(pytester)
    assert not v["test_mocked_client"][0] and not v["test_s"][0] and v["test_model"][0]
    pytester.makeini("[pytest]\nheavylock_rules = marker tokens\n")
    r = pytester.runpytest_subprocess()
    assert r.ret == pytest.ExitCode.USAGE_ERROR
    r.stderr.fnmatch_lines(["*ini option heavylock_rules: unknown rule 'tokens'*"])


def test_llm_lock_inside_a_heavy_test_keeps_the_test_lock(pytester, env, cli):
    """Inside a heavy test `with llm_lock:` must neither deadlock on the
    lock the test holds nor release it at the end of the block."""
    pytester.makepyfile(test_e=f"""
        import subprocess, pytest
        @pytest.mark.llm
        def test_block(llm_lock):
            st = lambda: subprocess.run([{cli!r}, "status"], capture_output=True).returncode
            with llm_lock:
                assert st() == 1
            assert st() == 1   # still held: the test's own lock
    """)
    r = pytester.runpytest_subprocess()
    r.assert_outcomes(passed=1)
