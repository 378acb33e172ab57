"""The pytest plugin, through real pytest subprocesses (pytester).

Exclusion claims are proven from intervals that the generated tests record
themselves (wall clock, per process), never from the plugin's own report
alone and never from sleeps."""

import json
import os
import subprocess
import sys
import textwrap
import time

import pytest

from helpers import overlaps, wait_for

pytest_plugins = ["pytester"]

RECORDING = """
    import os, time, pytest

    LOG = os.environ["IV_LOG"]

    def record(kind, t0, t1):
        with open(LOG, "a") as f:
            f.write(f"{kind} {t0!r} {t1!r} {os.getpid()}\\n")

    @pytest.fixture
    def model():
        # a heavy fixture: the "model load" happens in setup
        t0 = time.time()
        time.sleep(0.05)
        yield "model"
        record("heavy", t0, time.time())
"""


def with_recording(body):
    """A test module: the recording helpers above plus `body`."""
    return textwrap.dedent(RECORDING) + textwrap.dedent(body)


def intervals(log, kind):
    out = []
    if not os.path.exists(log):
        return out
    for line in open(log):
        k, a, b, pid = line.split()
        if k == kind:
            out.append((float(a), float(b), int(pid)))
    return sorted(out)


@pytest.fixture
def env(pytester, monkeypatch, tmp_path):
    for k in ("RUN_HEAVY_INTEGRATION", "LOCAL_MODEL_PATH", "HEAVYLOCK_PATH", "HEAVYLOCK_BACKEND",
              "HEAVYLOCK_TIMEOUT", "USE_LOCAL_LLM", "PYTEST_ADDOPTS"):
        monkeypatch.delenv(k, raising=False)
    log = tmp_path / "intervals.log"
    monkeypatch.setenv("IV_LOG", str(log))
    return log


def explain(pytester, *args):
    r = pytester.runpytest_subprocess("--collect-only", "-q", "--heavylock-explain", *args)
    verdicts = {}
    for line in r.outlines:
        parts = line.split()
        if len(parts) >= 2 and parts[0] in ("HEAVY", "light"):
            verdicts[parts[1].split("::")[-1]] = (parts[0] == "HEAVY", line)
    return r, verdicts


def test_the_four_rules_and_their_reasons(pytester, env):
    pytester.makeconftest("""
        import pytest

        @pytest.fixture
        def raw_client():
            from app import LocalLLMClient  # noqa: the token is what counts
            return None

        @pytest.fixture
        def llm_client(raw_client):   # only reaches the token through raw_client
            return raw_client

        @pytest.fixture(autouse=True)
        def isolate(monkeypatch):
            monkeypatch.delenv("USE_LOCAL_LLM", raising=False)  # autouse: not scanned
    """)
    pytester.makepyfile(test_unit="""
        import pytest

        @pytest.mark.llm
        def test_marked(): pass

        def test_plain(): pass

        def test_token_in_body():
            provider = "LocalLLMProvider"

        def test_transitive_fixture(llm_client): pass

        @pytest.mark.usefixtures("raw_client")
        def test_usefixtures(): pass

        def test_model(local_model_path): pass

        class TestGroup:
            MODEL = "LOCAL_MODEL_PATH"
            def test_in_class(self): pass

        def test_mentions_nothing_heavy(): assert "LocalLLM" != "x"
    """)
    pytester.mkpydir("tests")
    scripts = pytester.mkpydir("tests/scripts")
    scripts.joinpath("test_script.py").write_text("def test_script(): pass\n")
    r, v = explain(pytester)
    assert r.ret == 0
    assert v["test_marked"][0] and "marker @pytest.mark.llm" in v["test_marked"][1]
    assert not v["test_plain"][0]
    assert v["test_token_in_body"][0] and "token LocalLLMProvider in test source" in \
        v["test_token_in_body"][1]
    assert v["test_transitive_fixture"][0] and "in fixture raw_client" in \
        v["test_transitive_fixture"][1]
    assert v["test_usefixtures"][0]
    assert v["test_model"][0] and "local_model_path" in v["test_model"][1]
    assert v["test_in_class"][0] and "class TestGroup" in v["test_in_class"][1]
    assert not v["test_mentions_nothing_heavy"][0]
    assert v["test_script"][0] and "file under tests/scripts/" in v["test_script"][1]
    r.stdout.fnmatch_lines(["heavylock: 7 of 9 tests take the lock *models/.llm_load.lock*"])


@pytest.mark.parametrize("value", ["1", "true", "yes", "TRUE", "Yes"])
def test_run_heavy_integration_on_serializes_everything(pytester, env, monkeypatch, value):
    pytester.makepyfile("def test_a(): pass\ndef test_b(): pass\n")
    monkeypatch.setenv("RUN_HEAVY_INTEGRATION", value)
    r, v = explain(pytester)
    assert v["test_a"][0] and v["test_b"][0] and "RUN_HEAVY_INTEGRATION" in v["test_a"][1]


@pytest.mark.parametrize("value", ["0", "false", "no", "", "NO"])
def test_run_heavy_integration_off(pytester, env, monkeypatch, value):
    pytester.makepyfile("def test_a(): pass\n")
    monkeypatch.setenv("RUN_HEAVY_INTEGRATION", value)
    r, v = explain(pytester)
    assert r.ret == 0 and not v["test_a"][0]


def test_run_heavy_integration_typo_is_a_usage_error(pytester, env, monkeypatch):
    pytester.makepyfile("def test_a(): pass\n")
    monkeypatch.setenv("RUN_HEAVY_INTEGRATION", "ture")
    r = pytester.runpytest_subprocess()
    assert r.ret == pytest.ExitCode.USAGE_ERROR
    r.stderr.fnmatch_lines(["*RUN_HEAVY_INTEGRATION='ture' is not a yes/no value*"])


def test_run_heavy_flag_and_configurable_lists(pytester, env):
    pytester.makeini("""
        [pytest]
        heavylock_markers = llm
            gpu
        heavylock_paths = integration
        heavylock_tokens = TorchModel
    """)
    pytester.makepyfile(test_x="""
        import pytest
        @pytest.mark.gpu
        def test_gpu(): pass
        def test_torch(): m = "TorchModel"
        def test_old_token(): m = "LocalLLMClient"
    """)
    d = pytester.mkdir("integration")
    d.joinpath("test_i.py").write_text("def test_integ(): pass\n")
    r, v = explain(pytester)
    assert v["test_gpu"][0] and v["test_torch"][0] and v["test_integ"][0]
    assert not v["test_old_token"][0]  # replaced token list
    r, v = explain(pytester, "--run-heavy")
    assert v["test_old_token"][0]
    r = pytester.runpytest_subprocess("--markers")
    r.stdout.fnmatch_lines(["*@pytest.mark.gpu: heavy test*"])
    r.stdout.fnmatch_lines(["*@pytest.mark.llm: heavy test*"])


def test_local_model_path_fixture(pytester, env, monkeypatch, tmp_path):
    pytester.makepyfile("""
        def test_uses_model(local_model_path):
            assert local_model_path.name == "m.gguf"
            assert local_model_path.is_absolute()
    """)
    r = pytester.runpytest_subprocess("-rs")
    r.assert_outcomes(skipped=1)
    r.stdout.fnmatch_lines(["*opt in with RUN_HEAVY_INTEGRATION=1 (or --run-heavy) and "
                            "LOCAL_MODEL_PATH=*"])
    r = pytester.runpytest_subprocess("-rs", "--run-heavy")
    r.assert_outcomes(skipped=1)
    r.stdout.fnmatch_lines(["*export LOCAL_MODEL_PATH=/path/to/model.gguf*"])
    model = tmp_path / "store" / "m.gguf"
    model.parent.mkdir()
    model.write_bytes(b"GGUF")
    monkeypatch.setenv("LOCAL_MODEL_PATH", str(model))
    monkeypatch.setenv("RUN_HEAVY_INTEGRATION", "1")
    r = pytester.runpytest_subprocess()
    r.assert_outcomes(passed=1)
    assert (model.parent / ".llm_load.lock").exists()  # the lock moved next to the model
    r.stdout.fnmatch_lines([f"lock: {model.parent}/.llm_load.lock (from LOCAL_MODEL_PATH*"])
    monkeypatch.setenv("LOCAL_MODEL_PATH", str(tmp_path / "gone.gguf"))
    r = pytester.runpytest_subprocess()
    assert r.ret == pytest.ExitCode.USAGE_ERROR
    r.stderr.fnmatch_lines([f"*LOCAL_MODEL_PATH='{tmp_path}/gone.gguf' does not exist*"])


@pytest.mark.parametrize("where,setting", [
    ("cli", "--heavylock-timeout=soon"), ("env", "HEAVYLOCK_TIMEOUT"), ("ini", "heavylock_timeout")])
def test_bad_timeout_names_its_source(pytester, env, monkeypatch, where, setting):
    pytester.makepyfile("def test_a(): pass\n")
    args = []
    if where == "cli":
        args = [setting]
    elif where == "env":
        monkeypatch.setenv(setting, "-3")
    else:
        pytester.makeini("[pytest]\nheavylock_timeout = 0\n")
    r = pytester.runpytest_subprocess(*args)
    assert r.ret == pytest.ExitCode.USAGE_ERROR
    name = {"cli": "--heavylock-timeout", "env": "HEAVYLOCK_TIMEOUT",
            "ini": "ini option heavylock_timeout"}[where]
    r.stderr.fnmatch_lines([f"*{name}: invalid timeout*"])


def test_bad_backend_is_a_usage_error(pytester, env, monkeypatch):
    pytester.makepyfile("def test_a(): pass\n")
    monkeypatch.setenv("HEAVYLOCK_BACKEND", "flck")
    r = pytester.runpytest_subprocess()
    assert r.ret == pytest.ExitCode.USAGE_ERROR
    r.stderr.fnmatch_lines(["*HEAVYLOCK_BACKEND='flck' is not a lock backend*"])


HEAVY_AND_LIGHT = with_recording("""
    @pytest.mark.parametrize("i", range(4))
    @pytest.mark.llm
    def test_heavy(model, i):
        time.sleep(0.3)

    @pytest.mark.parametrize("i", range(8))
    def test_light(i):
        t0 = time.time()
        time.sleep(1.0)
        record("light", t0, time.time())
""")


def test_xdist_heavy_never_overlap_light_do(pytester, env):
    pytest.importorskip("xdist")  # a test dependency: requirements-dev.txt installs it
    pytester.makepyfile(test_mix=HEAVY_AND_LIGHT)
    report = pytester.path / "report.json"
    r = pytester.runpytest_subprocess("-n", "4", "-p", "xdist", f"--heavylock-report={report}")
    r.assert_outcomes(passed=12)
    heavy = intervals(env, "heavy")
    light = intervals(env, "light")
    assert len(heavy) == 4 and len(light) == 8
    assert overlaps(heavy) == []
    assert len({pid for _, _, pid in heavy}) > 1  # they did run on several workers
    assert overlaps(light) != []  # light tests ran in parallel
    data = json.loads(report.read_text())
    held = sorted((e["acquired"], e["released"]) for e in data["events"] if e["acquired"])
    assert len(held) == 4 and all(b[0] >= a[1] for a, b in zip(held, held[1:]))
    r.stdout.fnmatch_lines(["*- heavylock -*", "4 tests took the lock: waited*"])


def test_xdist_run_heavy_integration_nothing_overlaps(pytester, env, monkeypatch):
    pytest.importorskip("xdist")
    pytester.makepyfile(test_all=with_recording("""
        @pytest.mark.parametrize("i", range(6))
        def test_any(model, i):
            time.sleep(0.1)
    """))
    monkeypatch.setenv("RUN_HEAVY_INTEGRATION", "yes")
    r = pytester.runpytest_subprocess("-n", "4", "-p", "xdist")
    r.assert_outcomes(passed=6)
    iv = intervals(env, "heavy")
    assert len(iv) == 6 and overlaps(iv) == []


def test_external_flock_holder_blocks_and_is_named(pytester, env, cli):
    pytester.makepyfile(test_h=with_recording("""
        @pytest.mark.llm
        def test_heavy(model): pass
    """))
    lock = pytester.path / "models" / ".llm_load.lock"
    lock.parent.mkdir()
    holder = subprocess.Popen(["flock", str(lock), "sleep", "2.5"])
    wait_for(lambda: subprocess.run([cli, "status", "--lock", str(lock)],
                                    capture_output=True).returncode == 1, what="flock to hold")
    seen_held_at = time.time()  # the holder exits about 2.5 s after it started
    r = pytester.runpytest_subprocess("-s")
    holder.wait()
    r.assert_outcomes(passed=1)
    r.stderr.fnmatch_lines([f"heavylock: waiting for {lock}, held by pid {holder.pid} "
                            f"(flock {lock} sleep 2.5)*"])
    (start, _end, _pid), = intervals(env, "heavy")
    assert start >= seen_held_at + 1.0  # it really waited for the holder


def test_timeout_fails_setup_naming_holder_and_session_goes_on(pytester, env, cli):
    pytester.makepyfile(test_t="""
        import pytest
        @pytest.mark.llm
        def test_heavy(): pass
        def test_light(): pass
    """)
    lock = pytester.path / "models" / ".llm_load.lock"
    lock.parent.mkdir()  # an explicit --lock into a missing directory is refused (66)
    holder = subprocess.Popen([cli, "run", "--lock", str(lock), "--label", "other-run", "--",
                               "sleep", "30"], start_new_session=True)
    try:
        wait_for(lambda: subprocess.run([cli, "status", "--lock", str(lock)],
                                        capture_output=True).returncode == 1, what="holder")
        r = pytester.runpytest_subprocess("--heavylock-timeout=0.5")
        r.assert_outcomes(passed=1, errors=1)
        r.stdout.fnmatch_lines([f"*gave up after waiting 0.5 s for {lock}, held by pid "
                                f"{holder.pid} (other-run)*"])
    finally:
        os.killpg(holder.pid, 9)
        holder.wait()


def test_two_concurrent_runs_exclude_each_other(pytester, env):
    pytester.makepyfile(test_c=with_recording("""
        @pytest.mark.parametrize("i", range(3))
        @pytest.mark.llm
        def test_heavy(model, i):
            time.sleep(0.2)
    """))
    runs = [subprocess.Popen([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
                             cwd=pytester.path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            for _ in range(2)]
    assert [p.wait(timeout=120) for p in runs] == [0, 0]
    iv = intervals(env, "heavy")
    assert len(iv) == 6 and len({pid for *_, pid in iv}) == 2
    assert overlaps(iv) == []


def test_holder_record_carries_the_node_id(pytester, env, cli):
    pytester.makepyfile(test_r=f"""
        import json, subprocess, pytest
        @pytest.mark.llm
        def test_who_holds(request):
            out = subprocess.run([{cli!r}, "status", "--json"], capture_output=True, text=True)
            data = json.loads(out.stdout)
            assert data["holder"]["record"]
            assert data["holder"]["label"] == request.node.nodeid
            assert data["holder"]["pid"] == __import__("os").getpid()
    """)
    r = pytester.runpytest_subprocess()
    r.assert_outcomes(passed=1)


@pytest.mark.parametrize("backend", ["native", "filelock", "fcntl", "pidfile"])
def test_each_backend_serializes(pytester, env, monkeypatch, backend):
    if backend == "filelock":
        pytest.importorskip("filelock")
    pytest.importorskip("xdist")
    pytester.makepyfile(test_b=with_recording("""
        @pytest.mark.parametrize("i", range(4))
        @pytest.mark.llm
        def test_heavy(model, i):
            time.sleep(0.1)
    """))
    monkeypatch.setenv("HEAVYLOCK_BACKEND", backend)
    args = ["-n", "2", "-p", "xdist"]
    if backend == "pidfile":
        args += ["-W", "default::heavylock.backends.PidfileWarning"]
    r = pytester.runpytest_subprocess(*args)
    r.assert_outcomes(passed=4)
    iv = intervals(env, "heavy")
    assert len(iv) == 4 and overlaps(iv) == []
    r.stdout.fnmatch_lines([f"lock: * backend {backend})"])


def test_llm_lock_fixture_locks_a_block(pytester, env, cli):
    pytester.makepyfile(test_e=f"""
        import subprocess
        def test_block(llm_lock):
            st = lambda: subprocess.run([{cli!r}, "status"], capture_output=True).returncode
            assert st() == 0
            with llm_lock:
                assert st() == 1
            assert st() == 0
    """)
    r = pytester.runpytest_subprocess()
    r.assert_outcomes(passed=1)


def test_default_run_does_not_touch_the_lock(pytester, env):
    pytester.makepyfile("def test_a(): pass\n")
    r = pytester.runpytest_subprocess()
    r.assert_outcomes(passed=1)
    assert not (pytester.path / "models").exists()
    r = pytester.runpytest_subprocess("-p", "no:heavylock", "--collect-only")
    assert "heavylock" not in r.stdout.str()


def test_lock_path_precedence(pytester, env, monkeypatch, tmp_path):
    pytester.makepyfile("import pytest\n@pytest.mark.llm\ndef test_h(): pass\n")
    pytester.makeini("[pytest]\nheavylock_path = locks/from-ini.lock\n")
    r = pytester.runpytest_subprocess()
    r.stdout.fnmatch_lines([f"lock: {pytester.path}/locks/from-ini.lock (from ini option*"])
    monkeypatch.setenv("HEAVYLOCK_PATH", str(tmp_path / "from-env.lock"))
    r = pytester.runpytest_subprocess()
    r.stdout.fnmatch_lines([f"lock: {tmp_path}/from-env.lock (from HEAVYLOCK_PATH*"])
    r = pytester.runpytest_subprocess(f"--heavylock-path={tmp_path}/from-cli.lock")
    r.stdout.fnmatch_lines([f"lock: {tmp_path}/from-cli.lock (from --heavylock-path*"])
    assert (tmp_path / "from-cli.lock").is_file()
    monkeypatch.setenv("HEAVYLOCK_PATH", "")
    r = pytester.runpytest_subprocess()
    assert r.ret == pytest.ExitCode.USAGE_ERROR
    r.stderr.fnmatch_lines(["*HEAVYLOCK_PATH is set but empty*"])
