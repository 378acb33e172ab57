"""The plugin's slots and memory admission (--heavylock-slots, --heavylock-budget)
and the weights of heavy tests (declared, measured, estimated), through real
pytest runs with real xdist workers.

Every claim about concurrency is read from intervals the generated tests
record themselves (start, end, pid, declared bytes), never from sleeps."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("xdist")  # a test dependency: requirements-dev.txt installs it

# the example's real model (make example-setup; make test-py passes it)
MODEL = os.environ.get("LLM_APP_MODEL") or os.path.join(
    os.path.dirname(__file__), "..", "..", "examples", "llm-app", "models",
    "SmolLM2-135M-Instruct.Q4_1.gguf")
G = 2**30

RECORDING = """
    import json, os, time, pytest

    def hold(request, seconds, weight=0):
        t0 = time.time()
        time.sleep(seconds)
        with open(os.environ["IV_LOG"], "a") as f:
            f.write(json.dumps([t0, time.time(), os.getpid(), weight,
                                request.node.nodeid]) + "\\n")
"""


def module(body):
    return textwrap.dedent(RECORDING) + textwrap.dedent(body)


def intervals(log):
    out = []
    if os.path.exists(log):
        for line in open(log):
            a, b, pid, w, name = json.loads(line)
            out.append((a, b, pid, w, name))
    return sorted(out)


def at_once(iv):
    """The most intervals open at one instant, and the largest sum of their
    weights at one instant (a sweep over starts and ends; an end at the same
    instant as a start comes first: the next holder got in after it)."""
    points = sorted([(a, 1, w) for a, _, _, w, _ in iv] + [(b, -1, w) for _, b, _, w, _ in iv],
                    key=lambda p: (p[0], p[1]))
    n = most = 0
    weight = heaviest = 0
    for _, d, w in points:
        n += d
        weight += d * w
        most, heaviest = max(most, n), max(heaviest, weight)
    return most, heaviest


@pytest.fixture
def env(pytester, monkeypatch, tmp_path):
    for k in ("RUN_HEAVY_INTEGRATION", "LOCAL_MODEL_PATH", "HEAVYLOCK_PATH", "HEAVYLOCK_URL",
              "HEAVYLOCK_BACKEND", "HEAVYLOCK_TIMEOUT", "HEAVYLOCK_LANE", "HEAVYLOCK_SLOTS",
              "HEAVYLOCK_BUDGET", "USE_LOCAL_LLM", "PYTEST_ADDOPTS"):
        monkeypatch.delenv(k, raising=False)
    log = tmp_path / "intervals.log"
    monkeypatch.setenv("IV_LOG", str(log))
    return log


def run(pytester, *args, timeout=180):
    return pytester.runpytest_subprocess("-p", "xdist", *args, timeout=timeout)


def test_two_slots_admit_two_never_three(pytester, env):
    """-n 3, the lane off, --heavylock-slots 2: the lock admits two heavy
    tests at once (they do overlap) and never three."""
    pytester.makepyfile(test_s=module("""
        @pytest.mark.llm
        @pytest.mark.parametrize("i", range(9))
        def test_heavy(request, i):
            hold(request, 0.4)
    """))
    r = run(pytester, "-n", "3", "--heavylock-lane", "off", "--heavylock-slots", "2")
    r.assert_outcomes(passed=9)
    iv = intervals(env)
    assert len(iv) == 9
    assert at_once(iv)[0] == 2, iv
    r.stdout.fnmatch_lines(["*lock: *slots 2, budget live memory*"])


def test_auto_admits_by_declared_weight_within_budget(pytester, env):
    """--heavylock-slots auto with a budget that fits two 1 GiB tests: never
    more than two at once, the declared weights of those at once never past
    the budget, and two do overlap; a test heavier than the budget runs
    alone."""
    pytester.makepyfile(test_w=module("""
        @pytest.mark.llm(mem="1G")
        @pytest.mark.parametrize("i", range(6))
        def test_one_gig(request, i):
            hold(request, 0.4, 2**30)

        @pytest.mark.llm(mem="10G")
        def test_huge(request):
            hold(request, 0.4, 10 * 2**30)
    """))
    r = run(pytester, "-n", "3", "--heavylock-lane", "off", "--heavylock-slots", "auto",
            "--heavylock-budget", "2.5G")
    r.assert_outcomes(passed=7)
    iv = intervals(env)
    most, heaviest = at_once([i for i in iv if i[3] == G])
    assert most == 2, iv
    assert heaviest <= 2.5 * G
    huge = [i for i in iv if i[3] > G][0]
    others = [i for i in iv if i is not huge]
    assert all(o[1] <= huge[0] or o[0] >= huge[1] for o in others), (huge, others)
    r.stdout.fnmatch_lines(["*weights of the 7 heavy tests: 7 declared*"])


def test_two_runs_share_one_accounting(pytester, env, tmp_path):
    """Two concurrent pytest runs (-n 2 each, the lane off) with
    --heavylock-slots auto on one lock and a budget for two 1 GiB tests:
    across both runs never more than two at once, and the runs do overlap
    each other."""
    pytester.makepyfile(test_w=module("""
        @pytest.mark.llm(mem="1G")
        @pytest.mark.parametrize("i", range(5))
        def test_one_gig(request, i):
            hold(request, 0.4, 2**30)
    """))
    lock = tmp_path / "shared" / ".llm_load.lock"
    lock.parent.mkdir()
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "xdist", "-n",
           "2", "--heavylock-lane", "off", "--heavylock-slots", "auto", "--heavylock-budget",
           "2.5G", "--heavylock-path", str(lock)]
    runs = [subprocess.Popen(cmd, cwd=pytester.path, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=180)[0] for p in runs]
    assert [p.returncode for p in runs] == [0, 0], outs
    iv = intervals(env)
    assert len(iv) == 10
    assert at_once(iv)[0] <= 2, iv
    assert at_once(iv)[1] <= 2.5 * G
    # which run a pid belongs to: the runs' workers are distinct processes;
    # overlap between runs shows that the two share the slots, not take turns
    assert at_once(iv)[0] == 2


def test_weight_sources_declared_measured_estimated(pytester, env, tmp_path):
    """--heavylock-explain, the summary and the JSON report name where each
    weight came from: declared by the marker, estimated from the GGUF model
    (first run), then measured from the first run's peak (second run)."""
    if not os.path.isfile(MODEL):
        pytest.fail(f"the example model {MODEL} is missing: make example-setup")
    pytester.makepyfile(test_src=module("""
        @pytest.mark.llm(mem="300M")
        def test_declared(request):
            hold(request, 0.01)

        @pytest.mark.llm
        def test_big_first(request):
            block = bytearray(256 * 2**20)   # touched, then freed before the next test
            for i in range(0, len(block), 4096):
                block[i] = 1
            del block

        @pytest.mark.llm
        def test_grows(request):
            block = bytearray(64 * 2**20)   # touched: resident
            for i in range(0, len(block), 4096):
                block[i] = 1
            hold(request, 0.01)

        def test_model(request, local_model_path):
            hold(request, 0.01)
    """))
    report = pytester.path / "r.json"  # (as --opt=path: an existing path argument moves rootdir)
    (tmp_path / "models").mkdir()
    model = tmp_path / "models" / "model.gguf"  # the lock goes next to it, here
    model.symlink_to(os.path.abspath(MODEL))
    os.environ["RUN_HEAVY_INTEGRATION"] = "1"
    os.environ["LOCAL_MODEL_PATH"] = str(model)
    try:
        args = ("--heavylock-slots", "auto", "--heavylock-budget", "4G", "--heavylock-explain",
                f"--heavylock-report={report}")
        first = pytester.runpytest_subprocess(*args)
        first.assert_outcomes(passed=4)
        first.stdout.fnmatch_lines([
            "*HEAVY*test_declared*weight 300.0 MiB (declared)*",
            "*HEAVY*test_grows*(estimated)*",
            "*HEAVY*test_model*(estimated)*",
            "*weights of the 4 heavy tests: 1 declared, 3 estimated*"])
        events = {e["nodeid"].split("::")[-1]: e for e in json.loads(report.read_text())["events"]}
        assert events["test_declared"]["weight"] == 300 * 2**20
        assert events["test_declared"]["weight_source"] == "declared"
        assert events["test_model"]["weight_source"] == "estimated"
        from heavylock import _native
        assert events["test_model"]["weight"] == _native.gguf_estimate(MODEL)["total"] > 0

        second = pytester.runpytest_subprocess(*args)
        second.assert_outcomes(passed=4)
        second.stdout.fnmatch_lines(["*HEAVY*test_declared*(declared)*",
                                     "*HEAVY*test_grows*(measured)*",
                                     "*weights of the 4 heavy tests: 1 declared, 3 measured*"])
        events = {e["nodeid"].split("::")[-1]: e for e in json.loads(report.read_text())["events"]}
        grows = events["test_grows"]
        assert grows["weight_source"] == "measured"
        # the 64 MiB it touched, give or take; not the 256 MiB peak of the test
        # before it (the high-water mark is reset per test)
        assert 60 * 2**20 <= grows["weight"] < 128 * 2**20, grows
        assert events["test_big_first"]["weight"] >= 250 * 2**20
        assert events["test_declared"]["weight_source"] == "declared"
    finally:
        del os.environ["RUN_HEAVY_INTEGRATION"], os.environ["LOCAL_MODEL_PATH"]


@pytest.mark.parametrize("args, envs, expect", [
    (("--heavylock-slots", "two"), {}, "*--heavylock-slots: invalid number of slots 'two'*"),
    ((), {"HEAVYLOCK_SLOTS": "0"}, "*HEAVYLOCK_SLOTS: invalid number of slots '0'*"),
    (("--heavylock-budget", "2X"), {}, "*--heavylock-budget: invalid budget '2X'*"),
    ((), {"HEAVYLOCK_BUDGET": "-1G"}, "*HEAVYLOCK_BUDGET: invalid budget '-1G'*"),
    (("--heavylock-slots", "auto"), {"HEAVYLOCK_URL": "postgresql://u@h/db?name=x"},
     "*--heavylock-slots: slots auto on the lock server postgresql://u@h/db?name=x (from "
     "HEAVYLOCK_URL) need --heavylock-budget SIZE*"),
])
def test_bad_slots_and_budget_are_usage_errors(pytester, env, monkeypatch, args, envs, expect):
    for k, v in envs.items():
        monkeypatch.setenv(k, v)
    pytester.makepyfile(test_x="def test_x(): pass")
    r = pytester.runpytest_subprocess(*args)
    assert r.ret == pytest.ExitCode.USAGE_ERROR
    r.stderr.fnmatch_lines([expect])


def test_bad_declared_weight_fails_that_test(pytester, env):
    """mem="lots" is an error naming the test and the value; the other tests run."""
    pytester.makepyfile(test_m=module("""
        @pytest.mark.llm(mem="lots")
        def test_bad(request):
            hold(request, 0.01)

        @pytest.mark.llm(mem="1M")
        def test_good(request):
            hold(request, 0.01)
    """))
    r = pytester.runpytest_subprocess("--heavylock-slots", "auto", "--heavylock-budget", "1G")
    r.assert_outcomes(passed=1, errors=1)
    r.stdout.fnmatch_lines(["*test_m.py::test_bad: @pytest.mark.llm(mem='lots') is not a size*"])
    assert [i[4].split("::")[-1] for i in intervals(env)] == ["test_good"]


def test_deleted_lock_file_is_named_in_summary(pytester, env, tmp_path):
    """A heavy test that deletes the lock file while holding it: the lock
    excluded nobody who opened the new file; the summary says so."""
    lock = tmp_path / "l" / ".llm_load.lock"
    lock.parent.mkdir()
    pytester.makepyfile(test_d=f"""
        import os, pytest

        @pytest.mark.llm
        def test_unlinks():
            os.unlink({str(lock)!r})
    """)
    r = pytester.runpytest_subprocess("--heavylock-path", str(lock))
    r.assert_outcomes(passed=1)
    r.stdout.fnmatch_lines(["*test_unlinks*was deleted or replaced while it was held*"])


@pytest.mark.parametrize("budget, lanes", [("2.5G", 2), ("1.5G", 1)])
def test_auto_lanes_as_many_as_the_weights_fit(pytester, env, budget, lanes):
    """The lane (on, -n 4) with auto: as many lanes as the heaviest declared
    weights fit in the budget (two 1 GiB tests in 2.5 GiB, one in 1.5 GiB),
    at most workers - 1; the light tests run elsewhere."""
    pytester.makepyfile(test_l=module("""
        @pytest.mark.llm(mem="1G")
        @pytest.mark.parametrize("i", range(6))
        def test_heavy(request, i):
            hold(request, 0.2, 2**30)

        @pytest.mark.parametrize("i", range(6))
        def test_light(request, i):
            hold(request, 0.05)
    """))
    r = run(pytester, "-n", "4", "--heavylock-slots", "auto", "--heavylock-budget", budget)
    r.assert_outcomes(passed=12)
    heavy = [i for i in intervals(env) if i[3]]
    assert len({pid for _, _, pid, _, _ in heavy}) == lanes
    assert at_once(heavy)[0] <= lanes
    r.stdout.fnmatch_lines([f"*--heavylock-slots auto (--heavylock-slots): {lanes} lane(s)*"])


def test_estimate_takes_the_context_a_test_declares(pytester, env, tmp_path, monkeypatch):
    """@pytest.mark.llm(ctx=256): the GGUF estimate's KV cache is for the 256
    tokens the test runs the model with, not the model's own 4096; a context
    that is not a number of tokens fails that test, naming it."""
    from helpers import toy_gguf
    from heavylock import _native
    (tmp_path / "models").mkdir()
    model = tmp_path / "models" / "toy.gguf"
    toy_gguf(model, ctx=4096)
    pytester.makepyfile(test_ctx=module("""
        @pytest.mark.llm(ctx=256)
        def test_small_context(request):
            hold(request, 0.01)

        @pytest.mark.llm
        def test_model_context(request):
            hold(request, 0.01)

        @pytest.mark.llm(ctx="lots")
        def test_bad_context(request):
            hold(request, 0.01)
    """))
    report = pytester.path / "r.json"
    monkeypatch.setenv("RUN_HEAVY_INTEGRATION", "1")
    monkeypatch.setenv("LOCAL_MODEL_PATH", str(model))
    r = pytester.runpytest_subprocess("--heavylock-slots", "auto", "--heavylock-budget", "4G",
                                      f"--heavylock-report={report}", "-p", "no:cacheprovider")
    r.assert_outcomes(passed=2, errors=1)
    r.stdout.fnmatch_lines(["*test_ctx.py::test_bad_context: @pytest.mark.llm(ctx='lots') is "
                            "not a context length*"])
    events = {e["nodeid"].split("::")[-1]: e for e in json.loads(report.read_text())["events"]
              if e.get("kind", "test") == "test"}
    small, full = events["test_small_context"], events["test_model_context"]
    assert small["weight_source"] == full["weight_source"] == "estimated"
    assert small["weight"] == _native.gguf_estimate(str(model), 256)["total"]
    assert full["weight"] == _native.gguf_estimate(str(model))["total"]
    per_token = 16 * 8 * (64 + 64) * 2
    assert full["weight"] - small["weight"] == (4096 - 256) * per_token
