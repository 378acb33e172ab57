"""What the plugin keeps per test (issue #18): a light test costs its verdict
only, unless a report or timeline asks for every test; the controller keeps
a record per heavy test only.  (Sizes and times are bench/kernel.py's.)"""

import pytest

pytest_plugins = ["pytester"]

CONFTEST = """
import pytest
from heavylock.plugin import STATE_KEY

@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session):
    pm = session.config.pluginmanager
    events = pm.getplugin("heavylock-state").recorder.events
    reports = pm.getplugin("heavylock-lane").reports
    print("\\nEVENTS", sorted(e["nodeid"].split("::")[-1] for e in events))
    print("REPORTS", sorted(n.split("::")[-1] for n in reports))
"""

TESTS = """
import pytest

def test_light_1():
    pass

def test_light_2():
    pass

@pytest.mark.llm
def test_heavy():
    pass
"""


@pytest.fixture
def suite(pytester, monkeypatch, tmp_path):
    for k in ("RUN_HEAVY_INTEGRATION", "LOCAL_MODEL_PATH", "HEAVYLOCK_PATH", "HEAVYLOCK_BACKEND",
              "HEAVYLOCK_TIMEOUT", "USE_LOCAL_LLM", "PYTEST_ADDOPTS", "PYTEST_XDIST_WORKER"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("HEAVYLOCK_PATH", str(tmp_path / "lock" / ".llm_load.lock"))
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_cost=TESTS)
    return pytester


def test_light_tests_leave_no_record(suite):
    # Was: an event per test (0.6-0.8 KiB in every worker) and two records
    # per test in the controller (1.6 KiB), for a run that reports nothing.
    r = suite.runpytest_subprocess("-s", "-p", "no:cacheprovider")
    r.assert_outcomes(passed=3)
    r.stdout.fnmatch_lines(["EVENTS ['test_heavy']", "REPORTS ['test_heavy']"])


def test_a_report_still_lists_every_test(suite, tmp_path):
    report = tmp_path / "r.json"
    r = suite.runpytest_subprocess("-s", "-p", "no:cacheprovider", f"--heavylock-report={report}")
    r.assert_outcomes(passed=3)
    r.stdout.fnmatch_lines(["EVENTS ['test_heavy', 'test_light_1', 'test_light_2']"])
    text = report.read_text()
    assert "test_light_1" in text and "test_heavy" in text
