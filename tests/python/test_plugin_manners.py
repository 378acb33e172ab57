"""Getting along (issue 12): option names that do not collide, pytest-timeout
not counting the lock wait, a report that survives a missing folder and a
killed worker, a timeline that starts at the first test."""

import json
import os
import re
import subprocess
import textwrap
import threading
import time

import pytest

from helpers import held_by, wait_for
from test_plugin import env  # noqa: F401 (fixture)

pytest_plugins = ["pytester"]


def test_a_conftest_with_its_own_run_heavy_option(pytester, env):
    pytester.makeconftest("""
        def pytest_addoption(parser):
            parser.addoption("--run-heavy", action="store_true", help="the project's own")
    """)
    pytester.makepyfile(test_o="""
        def test_own_option(request):
            assert request.config.getoption("run_heavy")
    """)
    r = pytester.runpytest_subprocess("--run-heavy")
    r.assert_outcomes(passed=1)
    r = pytester.runpytest_subprocess("--run-heavy", "--heavylock-run-heavy",
                                      "--collect-only", "-q", "--heavylock-explain")
    assert r.ret == 0
    r.stdout.fnmatch_lines(["*HEAVY  test_o.py::test_own_option  (--heavylock-run-heavy (every "
                            "test)*"])


def kill(p):
    """flock and the command under it, which holds the lock too."""
    try:
        os.killpg(p.pid, 9)
    except ProcessLookupError:
        pass


@pytest.fixture
def held_for(pytester, cli):
    """Hold the default lock from another process until someone has waited
    for it `seconds` (the waiter seen in status, not guessed from sleeps: a
    loaded machine may take seconds to start pytest)."""
    holders = []

    def hold(seconds):
        lock = pytester.path / "models" / ".llm_load.lock"
        lock.parent.mkdir(exist_ok=True)
        p = subprocess.Popen(["flock", str(lock), "sleep", "120"], start_new_session=True)
        wait_for(lambda: held_by(cli, lock) == p.pid, what="holder")

        def release_after_a_wait():
            try:
                wait_for(lambda: json.loads(subprocess.run(
                    [cli, "status", "--lock", str(lock), "--json"], capture_output=True,
                    text=True).stdout)["waiters"], timeout=60, what="a waiter")
                time.sleep(seconds)
            finally:
                kill(p)

        t = threading.Thread(target=release_after_a_wait, daemon=True)
        t.start()
        holders.append((p, t))
        return p

    yield hold
    for p, t in holders:
        kill(p)
        p.wait()
        t.join()


@pytest.mark.parametrize("method", ["signal", "thread"])
def test_pytest_timeout_does_not_count_the_lock_wait(pytester, env, held_for, method):
    pytest.importorskip("pytest_timeout")
    pytester.makepyfile(test_t="""
        import time, pytest

        @pytest.mark.llm
        def test_waits_in_setup():
            pass

        def test_waits_in_llm_lock(llm_lock):
            with llm_lock:
                pass

        @pytest.mark.llm
        def test_still_timed_after_the_wait():
            time.sleep(5)   # the budget applies again once the lock is held
    """)
    held_for(2.5)
    r = pytester.runpytest_subprocess("--timeout=1.5", f"--timeout-method={method}",
                                      "-k", "waits_in")
    r.assert_outcomes(passed=2)
    assert "Timeout" not in r.stdout.str()
    # the timer is armed again once the lock is held (the thread method ends
    # the whole process on a timeout, so this one runs alone)
    held_for(2.5)
    r = pytester.runpytest_subprocess("--timeout=1.5", f"--timeout-method={method}",
                                      "-k", "still_timed")
    assert r.ret != 0
    r.stdout.fnmatch_lines(["*heavylock: waiting for*", "*Timeout*"])


def test_pytest_timeout_resumes_with_what_was_left(pytester, env, held_for):
    """A lock taken late in a test: after the wait the timer runs on with
    what was left of it (1.5 of 4 s here), not with the whole timeout again
    (which would let this test's 2.5 + 3 s pass under a 4 s timeout)."""
    pytest.importorskip("pytest_timeout")
    pytester.makepyfile(test_t="""
        import time

        def test_takes_the_lock_late(llm_lock):
            time.sleep(2.5)      # most of the budget, before the lock
            with llm_lock:       # waits for the holder: not counted
                time.sleep(3)    # 1.5 s were left: the timer fires in here
    """)
    held_for(2.0)  # past the 1 s after which a wait is announced
    r = pytester.runpytest_subprocess("--timeout=4", "--timeout-method=signal")
    assert r.ret != 0
    r.stdout.fnmatch_lines(["*heavylock: waiting for*", ">*time.sleep(3)*",
                            "*Timeout (>1.[0-5]*s) from pytest-timeout*"])


def test_report_into_a_missing_folder_with_outcomes(pytester, env):
    pytester.makepyfile(test_o="""
        import pytest

        @pytest.fixture
        def broken():
            raise RuntimeError("fixture broke")

        @pytest.mark.llm
        def test_pass(): pass
        def test_fail(): assert False
        def test_skip(): pytest.skip("no")
        def test_error(broken): pass
        @pytest.mark.xfail
        def test_xfail(): assert False
    """)
    report = pytester.path / "out" / "deep" / "r.json"
    r = pytester.runpytest_subprocess(f"--heavylock-report={report}")
    r.assert_outcomes(passed=1, failed=1, skipped=1, errors=1, xfailed=1)
    r.stdout.fnmatch_lines(["*- heavylock -*"])  # the summary is there, no traceback
    data = json.loads(report.read_text())
    assert data["schema"] == 1
    outcomes = {e["nodeid"].split("::")[-1]: e["outcome"] for e in data["events"]}
    assert outcomes == {"test_pass": "passed", "test_fail": "failed", "test_skip": "skipped",
                        "test_error": "error", "test_xfail": "xfailed"}


def test_report_whose_folder_cannot_exist_is_a_usage_error(pytester, env):
    pytester.makepyfile("def test_a(): pass\n")
    (pytester.path / "afile").write_text("")
    r = pytester.runpytest_subprocess("--heavylock-report=afile/r.json")
    assert r.ret == pytest.ExitCode.USAGE_ERROR
    r.stderr.fnmatch_lines(["*--heavylock-report='afile/r.json': cannot create its folder*"])
    assert "Traceback" not in r.stderr.str() + r.stdout.str()


def test_sigkilled_worker_stays_in_report_and_timeline(pytester, env):
    pytest.importorskip("xdist")
    pytester.makepyfile(test_k="""
        import os, signal, time, pytest

        @pytest.mark.llm
        def test_killed():
            time.sleep(0.2)
            os.kill(os.getpid(), signal.SIGKILL)   # the OOM killer, say

        @pytest.mark.parametrize("i", range(3))
        def test_ok(i): pass
    """)
    report, svg = pytester.path / "r.json", pytester.path / "t.svg"
    r = pytester.runpytest_subprocess("-n", "2", "-p", "xdist", f"--heavylock-report={report}",
                                      f"--heavylock-timeline={svg}")
    r.assert_outcomes(passed=3, failed=1)
    events = {e["nodeid"]: e for e in json.loads(report.read_text())["events"]}
    killed = events["test_k.py::test_killed"]
    assert killed["outcome"] == "crashed" and killed["heavy"]
    assert killed["acquired"] and killed["released"] >= killed["acquired"] + 0.2
    assert killed["worker"].startswith("gw")
    assert all(events[f"test_k.py::test_ok[{i}]"]["outcome"] == "passed" for i in range(3))
    text = svg.read_text()
    assert re.search(r'<rect class="test crashed"[^>]*><title>test_k.py::test_killed', text)
    # SIGKILL with no OOM kill counted by the kernel: not called out of memory
    assert killed["cause"] == "killed by SIGKILL", killed
    assert "not out of memory" in killed["cause_evidence"], killed
    assert "oom_kill unchanged" in killed["cause_evidence"] or \
        "no OOM-kill counter" in killed["cause_evidence"], killed
    r.stdout.fnmatch_lines(["test_k.py::test_killed: its worker gw? died while running it, "
                            "holding the lock: killed by SIGKILL (Killed; not out of memory: *)"])
    assert "out of memory?" not in r.stdout.str()
    assert "worker died: killed by SIGKILL" in text


def test_segfaulted_worker_is_named_by_its_signal(pytester, env):
    """A worker that dies by a real SIGSEGV (as llama.cpp did on a CPU it
    could not run on) is said to, in the summary, the report and the
    timeline alike; not "out of memory"."""
    pytest.importorskip("xdist")
    pytester.makepyfile(test_s="""
        import ctypes, pytest

        @pytest.mark.llm
        def test_segv():
            ctypes.string_at(0)   # a real segmentation fault

        @pytest.mark.parametrize("i", range(3))
        def test_ok(i): pass
    """)
    report, svg = pytester.path / "r.json", pytester.path / "t.svg"
    r = pytester.runpytest_subprocess("-n", "2", "-p", "xdist", f"--heavylock-report={report}",
                                      f"--heavylock-timeline={svg}")
    r.assert_outcomes(passed=3, failed=1)
    r.stdout.fnmatch_lines(["test_s.py::test_segv: its worker gw? died while running it, "
                            "holding the lock: killed by SIGSEGV (Segmentation fault; "
                            "exit status -11)"])
    events = {e["nodeid"]: e for e in json.loads(report.read_text())["events"]}
    segv = events["test_s.py::test_segv"]
    assert (segv["outcome"], segv["cause"]) == ("crashed", "killed by SIGSEGV"), segv
    assert re.search(r"<title>test_s.py::test_segv \([^)]*crashed: worker died: "
                     r"killed by SIGSEGV", svg.read_text())
    assert "out of memory" not in r.stdout.str()


def test_worker_killed_while_importing_a_heavy_module(pytester, env):
    """A worker SIGKILLed during a heavy import (while holding the lock)
    stays in the report and is named in the summary."""
    pytest.importorskip("xdist")
    pytester.mkpydir("tests")
    pytester.mkpydir("tests/scripts").joinpath("test_gen.py").write_text(textwrap.dedent("""
        import os, signal
        if os.environ.get("PYTEST_XDIST_WORKER") == "gw1":
            os.kill(os.getpid(), signal.SIGKILL)
        def test_a(): pass
    """))
    report = pytester.path / "r.json"
    r = pytester.runpytest_subprocess("-n", "2", "-p", "xdist", f"--heavylock-report={report}")
    r.assert_outcomes(passed=1)
    crashed = [e for e in json.loads(report.read_text())["events"]
               if e.get("outcome") == "crashed"]
    assert [(e["kind"], e["nodeid"], e["worker"]) for e in crashed] == [
        ("import", "tests/scripts/test_gen.py", "gw1")]
    assert crashed[0]["acquired"] and crashed[0]["released"] >= crashed[0]["acquired"]
    r.stdout.fnmatch_lines(["tests/scripts/test_gen.py: its worker gw1 died while importing "
                            "it, holding the lock*"])


def test_timeline_starts_at_the_first_test_and_names_bars(pytester, env):
    pytester.makeconftest("""
        import time
        def pytest_collection_finish(session):
            time.sleep(1.5)   # a slow start-up (imports, collection) before any test
    """)
    pytester.makepyfile(test_t="""
        import time, pytest
        def test_first(): pass
        @pytest.mark.llm
        def test_long_enough_to_hold_its_name():
            time.sleep(1.0)
        @pytest.mark.parametrize("i", range(3))
        def test_quick(i): pass
    """)
    svg = pytester.path / "t.svg"
    r = pytester.runpytest_subprocess(f"--heavylock-timeline={svg}")
    r.assert_outcomes(passed=5)
    text = svg.read_text()
    xs = [float(x) for x in re.findall(r'<rect class="test[^"]*" x="([\d.]+)"', text)]
    assert len(xs) == 5 and min(xs) == pytest.approx(90, abs=1)  # the axis starts there
    m = re.search(r'(\d+\.\d) s\. <tspan', text)
    assert m and float(m.group(1)) < 1.4          # the span is the tests', not start-up's
    assert '<text class="name"' in text and ">test_long_enough_to_hold_its_name</text>" in text
    assert ">test_quick[0]</text>" not in text    # too narrow to hold a name
    assert "<title>test_t.py::test_quick[0]" in text  # its tooltip stays
