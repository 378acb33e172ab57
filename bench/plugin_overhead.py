"""Plugin overhead on a generated suite of 5,000 trivial tests: plugin on vs
`-p no:heavylock`, alternated in one run, reported as a ratio.

The suite is mostly light tests, as real suites are; one file in ten
mentions a heavy token (so the source scanner does real work) and a few
tests are marked heavy and take the lock.  Not a test: nothing gates CI.
"""

import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

FILES, PER_FILE, RUNS = 50, 100, 9


def make_suite(root):
    os.makedirs(os.path.join(root, "tests"))
    for f in range(FILES):
        lines = ["import pytest", ""]
        if f % 10 == 0:
            lines += ["CLIENT = 'LocalLLMClient'  # a token at module level", ""]
        for t in range(PER_FILE):
            if f % 10 == 0 and t == 0:
                lines += ["@pytest.mark.llm"]
            lines += [f"def test_{t}():", f"    assert {t} == {t}", ""]
        with open(os.path.join(root, "tests", f"test_f{f}.py"), "w") as fh:
            fh.write("\n".join(lines))


def cpu():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run(root, *args):
    """(wall seconds, CPU seconds) of one pytest run."""
    t0, c0 = time.perf_counter(), cpu()
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args],
                       cwd=root, capture_output=True, text=True)
    dt, dc = time.perf_counter() - t0, cpu() - c0
    if r.returncode != 0:
        sys.exit(f"pytest failed:\n{r.stdout[-2000:]}")
    return dt, dc


def main():
    root = tempfile.mkdtemp()
    make_suite(root)
    n = FILES * PER_FILE
    on, off = [], []
    run(root)  # warm the file cache and bytecode
    for _ in range(RUNS):
        off.append(run(root, "-p", "no:heavylock"))
        on.append(run(root))
    print(f"plugin overhead: {n} trivial tests, {RUNS} runs each, alternated\n")
    print("| run | median wall time | median CPU time | CPU per test |")
    print("|---|---:|---:|---:|")
    med = {}
    for name, runs in (("-p no:heavylock", off), ("heavylock on", on)):
        w, c = statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)
        med[name] = (w, c)
        print(f"| {name} | {w:.2f} s | {c:.2f} s | {c / n * 1e6:.0f} us |")
    (w0, c0), (w1, c1) = med["-p no:heavylock"], med["heavylock on"]
    print(f"\nratio on/off: wall {w1 / w0:.3f} ({(w1 / w0 - 1) * 100:+.1f}%), "
          f"CPU {c1 / c0:.3f} ({(c1 / c0 - 1) * 100:+.1f}%)")


if __name__ == "__main__":
    main()
