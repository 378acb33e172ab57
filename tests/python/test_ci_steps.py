"""The CI runner's steps (ci/steps.sh, sourced by .ci/run): a failing step
never stops the run, and the table at the end tells every step's result."""

import os
import subprocess

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
