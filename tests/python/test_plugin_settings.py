"""The plugin's settings: one reader per kind of value, the same answer from
every source, and every bad value named with its source at start-up."""

import pytest

from heavylock import _native
from heavylock.settings import size_parse_py
from test_plugin import env, explain  # noqa: F401 (fixture)

pytest_plugins = ["pytester"]

# input -> bytes, or None for "not a size": the one table both parsers answer
SIZES = {
    "1048576": 1 << 20, "0": 0, "00": 0, "512M": 512 << 20, "2G": 2 << 30, "2GiB": 2 << 30,
    "1.5GiB": 3 << 29, "1.5G": 3 << 29, "1.5mb": 3 << 19, "100kb": 100 << 10, "100b": 100,
    "1b": 1, "1kib": 1 << 10, "1KIB": 1 << 10, ".5k": 512, "5.k": 5 << 10, "1e3k": 1024000,
    "1t": 1 << 40, "1tb": 1 << 40,
    "1.5": None, "2 GiB": None, "1.0": None, "1e3": None, "0x10": None, "inf": None,
    "nan": None, "-1": None, "+1": None, " 1": None, "1k ": None, "1 k": None, "1kk": None,
    "1ib": None, "1bb": None, "1_000": None, "\uff11": None, "": None, "k": None, "1e": None,
    "3.": None, "16E": None, "1p": None, "18446744073709551615": None, "17179869184G": None,
    "1e999": None, "1k\0": None,
}


def _parsed(parse, text):
    try:
        return parse(text)
    except ValueError:
        return None


@pytest.mark.parametrize("text", list(SIZES))
def test_size_parsers_agree_on_one_table(text):
    """The Python twin disagreed with C on 7 of 29 inputs ('1.5', '2 GiB')."""
    assert _parsed(_native.size_parse, text) == SIZES[text]
    assert _parsed(size_parse_py, text) == SIZES[text]


@pytest.mark.parametrize("value, heavy", [("on", True), ("off", False), ("1", True),
                                          ("no", False), ("maybe", None)])
def test_one_yes_no_reader_for_environment_and_ini(pytester, env, monkeypatch, value, heavy):
    """RUN_HEAVY_INTEGRATION=on was a usage error while ini
    heavylock_run_heavy = on was accepted."""
    pytester.makepyfile("def test_a(): pass\n")
    answers = []
    for where in ("RUN_HEAVY_INTEGRATION", "ini option heavylock_run_heavy"):
        if where.startswith("ini"):
            monkeypatch.delenv("RUN_HEAVY_INTEGRATION")
            pytester.makeini(f"[pytest]\nheavylock_run_heavy = {value}\n")
        else:
            monkeypatch.setenv("RUN_HEAVY_INTEGRATION", value)
        r, v = explain(pytester)
        if heavy is None:
            assert r.ret == pytest.ExitCode.USAGE_ERROR
            r.stderr.fnmatch_lines([f"*{where}='{value}' is not a yes/no value*"])
            answers.append(None)
        else:
            assert r.ret == 0
            answers.append(v["test_a"][0])
            if heavy:
                assert f"{where.replace('ini option ', '')}" in v["test_a"][1]
    assert answers == [heavy, heavy]


def test_every_test_heavy_names_the_opt_in_not_the_first_rule(pytester, env, monkeypatch):
    """The lane summary said 'every test is heavy (marker @pytest.mark.llm)'
    when RUN_HEAVY_INTEGRATION made them so."""
    pytest.importorskip("xdist")
    pytester.makepyfile(test_a="""
        import pytest
        @pytest.mark.llm
        def test_marked(): pass
        def test_b(): pass
        def test_c(): pass
    """)
    monkeypatch.setenv("RUN_HEAVY_INTEGRATION", "yes")
    r = pytester.runpytest_subprocess("-n", "2", "-p", "xdist")
    r.assert_outcomes(passed=3)
    r.stdout.fnmatch_lines(["every test is heavy (RUN_HEAVY_INTEGRATION=yes): *"])
    monkeypatch.delenv("RUN_HEAVY_INTEGRATION")
    r = pytester.runpytest_subprocess("-n", "2", "-p", "xdist", "--heavylock-run-heavy")
    r.stdout.fnmatch_lines(["every test is heavy (--heavylock-run-heavy): *"])


def test_a_timeline_it_cannot_draw_is_a_usage_error_at_start_up(pytester, env):
    """--heavylock-timeline=x.png wrote SVG into a .png at the end."""
    pytester.makepyfile("def test_a(): pass\n")
    r = pytester.runpytest_subprocess("--heavylock-timeline=x.png")
    assert r.ret == pytest.ExitCode.USAGE_ERROR
    r.stderr.fnmatch_lines(["*--heavylock-timeline='x.png': the file must end in .svg, .html "
                            "or .htm*"])
    assert not (pytester.path / "x.png").exists()
    r = pytester.runpytest_subprocess("--heavylock-timeline=run.HTML")
    r.assert_outcomes(passed=1)
    assert (pytester.path / "run.HTML").read_text().startswith("<!DOCTYPE html>")


@pytest.mark.parametrize("option", ["report", "timeline"])
def test_an_output_that_cannot_be_written_fails_the_run(pytester, env, option):
    """A report that could not be written at the end exited 0."""
    target = pytester.path / "out" / f"run.{'json' if option == 'report' else 'svg'}"
    pytester.makepyfile(f"""
        import os
        import pytest
        @pytest.mark.llm
        def test_a():
            os.mkdir({str(target)!r})   # the file's place is taken while the run goes on
    """)
    r = pytester.runpytest_subprocess(f"--heavylock-{option}={target}")
    assert r.ret == pytest.ExitCode.TESTS_FAILED
    r.assert_outcomes(passed=1)
    r.stdout.fnmatch_lines([f"heavylock: could not write the {option} {target}: Is a directory "
                            "(the run fails)"])


def test_a_run_inside_an_xdist_worker_is_no_worker(pytester, env, monkeypatch):
    """PYTEST_XDIST_WORKER inherited from an outer worker (pytester under
    -n) made the inner run act as a worker: no report of its own tests."""
    import json

    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw7")
    pytester.makepyfile("import pytest\n@pytest.mark.llm\ndef test_h(): pass\n")
    report = pytester.path / "r.json"
    r = pytester.runpytest_subprocess(f"--heavylock-report={report}")
    r.assert_outcomes(passed=1)
    events = json.loads(report.read_text())["events"]
    assert [(e["worker"], e["outcome"]) for e in events] == [("", "passed")]
