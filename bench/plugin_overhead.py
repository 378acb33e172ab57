"""Plugin overhead on a generated suite of 5,000 trivial tests: plugin on vs
`-p no:heavylock`, alternated in one run, reported as a ratio.

The suite is mostly light tests, as real suites are; one file in ten
mentions a heavy token (so the source scanner does real work) and a few
tests are marked heavy and take the lock.  Not a test: nothing gates CI.
"""

import os
import statistics
import subprocess
import sys
import tempfile
import time

FILES, PER_FILE, RUNS = 50, 100, 7


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


def run(root, *args):
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args],
                       cwd=root, capture_output=True, text=True)
    dt = time.perf_counter() - t0
    if r.returncode != 0:
        sys.exit(f"pytest failed:\n{r.stdout[-2000:]}")
    return dt


def main():
    root = tempfile.mkdtemp()
    make_suite(root)
    n = FILES * PER_FILE
    on, off = [], []
    run(root)  # warm the file cache and bytecode
    for _ in range(RUNS):
        off.append(run(root, "-p", "no:heavylock"))
        on.append(run(root))
    m_on, m_off = statistics.median(on), statistics.median(off)
    print(f"plugin overhead: {n} trivial tests, {RUNS} runs each, alternated\n")
    print("| run | median wall time | per test |")
    print("|---|---:|---:|")
    print(f"| -p no:heavylock | {m_off:.2f} s | {m_off / n * 1e6:.0f} us |")
    print(f"| heavylock on | {m_on:.2f} s | {m_on / n * 1e6:.0f} us |")
    print(f"\nratio on/off: {m_on / m_off:.3f} ({(m_on / m_off - 1) * 100:+.1f}%)")


if __name__ == "__main__":
    main()
