"""The runners: `make test`'s suites (tests/suites.py) and CI's steps
(ci/steps.sh, sourced by .ci/run).  A failing suite or step never stops the
run, and the summary at the end tells each one's result."""

import os
import subprocess
import sys
import textwrap

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")


def run_steps(body, tmp_path):
    script = f". ci/steps.sh\n{body}\nsteps_report\n"
    return subprocess.run(["bash", "-c", script], cwd=ROOT, capture_output=True, text=True,
                          timeout=60, env={**os.environ, "MARK": str(tmp_path)})


def test_every_step_runs_after_a_failure_and_the_table_fails_the_run(tmp_path):
    p = run_steps('step "first" false\n'
                  'step "second" touch "$MARK/second-ran"\n'
                  'step "third one" sh -c "exit 3"\n', tmp_path)
    assert p.returncode == 1, p.stdout + p.stderr
    assert (tmp_path / "second-ran").exists()  # ran although "first" had failed
    table = p.stdout.split("===== CI summary\n", 1)[1].splitlines()
    assert table[0].split() == ["step", "result", "seconds"]
    rows = {ln[:9].strip(): ln[9:].split("  ")[1].strip() for ln in table[1:4]}
    assert rows == {"first": "FAILED (exit 1)", "second": "passed",
                    "third one": "FAILED (exit 3)"}, table
    assert table[4].split()[:3] == ["total", "2", "failed"]


def test_all_steps_passing_pass_the_run(tmp_path):
    p = run_steps('step "one" true\nstep "two" true\n', tmp_path)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "total" in p.stdout and "0 failed" in p.stdout


def test_every_suite_runs_after_a_failure_and_the_summary_has_their_counts(tmp_path):
    """tests/suites.py with a real make over three suites: pytest-like that
    fails, meson-like, pytest-like that passes."""
    (tmp_path / "Makefile").write_text(textwrap.dedent("""\
        bad:
        \t@echo "1 failed, 2 passed in 0.20s"; exit 1
        meson:
        \t@printf 'Ok:                 4\\nExpected Fail:      0\\nFail:               1\\n'; exit 1
        good:
        \t@echo "3 passed, 1 skipped in 0.10s"
        """))
    p = subprocess.run([sys.executable, os.path.join(ROOT, "tests", "suites.py"),
                        "bad", "meson", "good"], capture_output=True, text=True, timeout=60,
                       env={**os.environ, "MAKE": f"make -C {tmp_path}"})
    assert p.returncode == 1, p.stdout + p.stderr
    summary = p.stdout.split("===== summary\n", 1)[1].splitlines()
    rows = [ln.split(None, 1)[0] for ln in summary[:3]]
    assert rows == ["bad", "meson", "good"], summary
    assert "FAILED (exit 2)" in summary[0] and "1 failed, 2 passed" in summary[0]
    assert "FAILED (exit 2)" in summary[1] and "4 ok, 1 fail" in summary[1]
    assert " passed " in summary[2] and "3 passed, 1 skipped" in summary[2]
    assert summary[3] == "2 of 3 suites failed: bad meson"
