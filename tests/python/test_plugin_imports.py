"""Import-time locking (issue 21 items 1 and 3, issue 17 item 9): what is
said about an import is what was measured; a module that loads no model is
imported under the lock once, then freely until it changes; the strict
preset keeps locking the imports its rules make heavy; a heavy folder's
conftest.py is imported under the lock, one worker at a time."""

import json
import textwrap

import pytest

from helpers import overlaps
from test_plugin import env  # noqa: F401 (fixture)

pytest_plugins = ["pytester"]

# pytest >= 8 loads a folder's conftest.py while making that folder's
# collect report (a Directory collector), which is where the plugin takes the
# lock; pytest 7 loads every conftest inside the session's one report.
needs_directory_collectors = pytest.mark.skipif(
    not hasattr(pytest, "Directory"),
    reason="heavy conftest.py files are imported under the lock on pytest >= 8 only")


def held_at_import(cli, extra=""):
    """A module that records, when imported, whether the lock was held."""
    return textwrap.dedent(f"""
        import os, subprocess, time
        t0 = time.time()
        {extra}
        HELD = subprocess.run([{cli!r}, "status"], capture_output=True).returncode == 1
        with open(os.environ["IV_LOG"], "a") as f:
            f.write(f"import {{t0!r}} {{time.time()!r}} {{os.getpid()}} {{HELD}}\\n")

        def test_it():
            pass
    """)


def imports_log(env):
    """[(start, end, pid, lock held)] of the recorded imports, in order."""
    out = []
    for line in env.read_text().splitlines():
        _, a, b, pid, held = line.split()
        out.append((float(a), float(b), int(pid), held == "True"))
    return out


def held_log(env):
    return [held for *_, held in imports_log(env)]


LOAD_NOTHING = ("JUNK = bytearray(40 * 2**20)\n"
                "        for i in range(0, len(JUNK), 4096): JUNK[i] = 1\n"
                "        time.sleep(1.1)  # a slow app import: no model")
LOAD_MODEL = ("import mmap\n"
              "        with open('models/tiny.gguf', 'rb') as f:\n"
              "            MAPPED = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)")


def scripts(pytester, name, text):
    pytester.mkpydir("tests")
    d = pytester.path / "tests" / "scripts"
    d.mkdir(exist_ok=True)
    (d / name).write_text(text)
    return d / name


def a_model(pytester):
    model = pytester.path / "models" / "tiny.gguf"
    model.parent.mkdir(exist_ok=True)
    model.write_bytes(b"GGUF" + bytes(4096))
    return model


def test_a_module_that_loads_no_model_is_measured_once_then_imported_freely(
        pytester, env, cli):
    """It was 'move the model load into a fixture' for a Flask app's import,
    on every run, each time waiting for the lock."""
    mod = scripts(pytester, "test_app.py", held_at_import(cli, LOAD_NOTHING))
    r = pytester.runpytest_subprocess()
    r.assert_outcomes(passed=1)
    r.stdout.fnmatch_lines(["importing tests/scripts/test_app.py took 1.* s and added * MiB and "
                            "loaded no model (no .gguf or file of the model's folder mapped or "
                            "open): from the next run on it is imported without the lock, until "
                            "the file changes"])
    assert "fixture" not in r.stdout.str() and "loaded the model" not in r.stdout.str()
    r = pytester.runpytest_subprocess()
    r.assert_outcomes(passed=1)
    assert "importing tests/scripts" not in r.stdout.str()  # nothing measured, nothing said
    mod.write_text(mod.read_text() + "# changed\n")
    r = pytester.runpytest_subprocess()
    r.assert_outcomes(passed=1)
    assert held_log(env) == [True, False, True]


def test_a_module_that_loads_a_model_stays_locked_and_is_named(pytester, env, cli):
    model = a_model(pytester)
    scripts(pytester, "test_refinement.py", held_at_import(cli, LOAD_MODEL))
    for _ in range(2):
        r = pytester.runpytest_subprocess()
        r.assert_outcomes(passed=1)
        r.stdout.fnmatch_lines([f"importing tests/scripts/test_refinement.py loaded the model "
                                f"{model} at import time (took * s and added * MiB), under the "
                                "lock*"])
    assert held_log(env) == [True, True]


@pytest.mark.parametrize("opted_in", [True, False])
def test_strict_rules_keep_import_time_locking(pytester, env, cli, monkeypatch, opted_in):
    """heavylock_rules = strict imported no module under the lock, even
    opted in: the model-at-import module loaded in every worker at once."""
    a_model(pytester)
    pytester.makeini("[pytest]\nheavylock_rules = strict\n")
    scripts(pytester, "test_refinement.py", held_at_import(cli, LOAD_MODEL))
    pytester.makepyfile(test_marked="import pytest\npytestmark = pytest.mark.llm\n" +
                        held_at_import(cli).replace("def test_it", "def test_marked"))
    if opted_in:
        monkeypatch.setenv("RUN_HEAVY_INTEGRATION", "1")
    r = pytester.runpytest_subprocess("-p", "no:randomly")
    r.assert_outcomes(passed=2)
    # the marked module always; the model-loading one when the opt-in makes it heavy
    assert sorted(held_log(env)) == ([True, True] if opted_in else [False, True])
    if opted_in:
        r.stdout.fnmatch_lines(["importing tests/scripts/test_refinement.py loaded the model*"])


@needs_directory_collectors
def test_a_conftest_under_a_heavy_path_is_imported_under_the_lock(pytester, env, cli):
    """Every worker imported tests/scripts/conftest.py at once (4 at once)."""
    pytest.importorskip("xdist")
    model = a_model(pytester)
    conftest = scripts(pytester, "conftest.py", held_at_import(cli, LOAD_MODEL + "\n"
                                                               "        time.sleep(0.3)"))
    conftest.write_text(conftest.read_text().replace("def test_it():\n    pass", ""))
    for i in range(3):
        (conftest.parent / f"test_s{i}.py").write_text("def test_s(): pass\n")
    report = pytester.path / "report.json"
    r = pytester.runpytest_subprocess("-n", "3", "-p", "xdist", f"--heavylock-report={report}")
    r.assert_outcomes(passed=3)
    iv = [(a, b, pid) for a, b, pid, _ in imports_log(env)]
    assert len(iv) == 3 and len({pid for *_, pid in iv}) == 3 and overlaps(iv) == []
    assert held_log(env) == [True, True, True]
    r.stdout.fnmatch_lines([f"importing tests/scripts/conftest.py loaded the model {model} at "
                            "import time (took * s and added * MiB in gw0, gw1, gw2)*"])
    imports = [e for e in json.loads(report.read_text())["events"] if e["kind"] == "import"]
    conftests = [e for e in imports if e["nodeid"] == "tests/scripts/conftest.py"]
    assert len(conftests) == 3 and all(e["acquired"] and e["model"] == str(model)
                                       for e in conftests)


@needs_directory_collectors
def test_a_heavy_conftest_that_cannot_get_the_lock_stops_the_run_unimported(pytester, env,
                                                                           cli):
    """A conftest is loaded before its folder's collect(): when the lock
    cannot be had, the run stops rather than import it without the lock."""
    import os
    import subprocess

    from helpers import wait_for
    from test_plugin_project import held_by_pid

    conftest = scripts(pytester, "conftest.py", held_at_import(cli))
    (conftest.parent / "test_s.py").write_text("def test_s(): pass\n")
    lock = pytester.path / "models" / ".llm_load.lock"
    lock.parent.mkdir()
    holder = subprocess.Popen(["flock", str(lock), "sleep", "60"], start_new_session=True)
    try:
        wait_for(lambda: held_by_pid(lock) == holder.pid, what="holder")
        r = pytester.runpytest_subprocess("--heavylock-timeout=0.3")
    finally:
        os.killpg(holder.pid, 9)
        holder.wait()
    assert r.ret == pytest.ExitCode.INTERRUPTED
    r.stdout.fnmatch_lines([f"*heavylock: gave up after waiting 0.3 s for {lock}*(to import "
                            "tests/scripts/conftest.py, which is never imported without the "
                            "lock)*"])
    assert not env.exists()  # never imported


def test_a_module_that_reads_a_file_as_big_as_a_model_stays_locked(pytester, env, cli):
    """Read into memory and closed, a model leaves no mapping to see: an
    import that read 32 MiB or more is never taken for light."""
    (pytester.path / "weights.bin").write_bytes(bytes(40 * 2**20))
    scripts(pytester, "test_reader.py", held_at_import(
        cli, "WEIGHTS = open('weights.bin', 'rb').read()"))
    for _ in range(2):
        r = pytester.runpytest_subprocess()
        r.assert_outcomes(passed=1)
        r.stdout.fnmatch_lines(["importing tests/scripts/test_reader.py took * s and added * MiB; "
                                "no model file was seen mapped or open, but it read 4? MiB, so "
                                "it may have read one: it stays under the lock"])
    assert held_log(env) == [True, True]
