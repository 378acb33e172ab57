"""The heavy lane against the lock alone, no plugin, and xdist's loadgroup.

A generated suite: heavy tests of HEAVY_S seconds that share a session-scoped
"model" fixture holding MODEL_MIB of touched memory, light tests of LIGHT_S
seconds around them, `-n WORKERS`, heavy tests collected last (and, in the
full form, first).  Side by side in one run, alternated:

- heavylock with the lane (the default under `-n`);
- heavylock with `--heavylock-lane=off` (the lock alone);
- no plugin (`-p no:heavylock`);
- `--dist loadgroup` with `xdist_group` marks on the heavy tests (no plugin).

For each: wall time / lower bound, where the lower bound is
max(heavy work / slots, all work / workers) + startup (heavy work counts one
model load; startup is a run of the same command selecting no test), and
peak RSS of the process tree (sampled every 20 ms) / (the tree's baseline,
the peak of that empty run, + one model).  "model copies" counts the
session fixture's setups.  Not a test: nothing gates CI on these figures.

Usage: python bench/lane.py [--quick] [--reps N] [--python PATH]
(--python: run the suites under another interpreter that has heavylock,
pytest and pytest-xdist installed, e.g. a venv of tests/compat.sh, to see
loadgroup on a pytest where it still groups.)
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time

from heavylock import _native

CONFTEST = """
    import os, pytest

    @pytest.fixture(scope="session")
    def model():
        block = bytearray(b"\\x01") * ({mib} * 2**20)  # every page written: resident
        with open(os.environ["BENCH_MODEL_LOG"], "a") as f:
            f.write(f"{{os.getpid()}}\\n")
        return block
"""

HEAVY = """
    import time, pytest

    @pytest.mark.llm
    @pytest.mark.xdist_group("model")
    @pytest.mark.parametrize("i", range({n}))
    def test_heavy(model, i):
        assert model[-1] == 1
        time.sleep({s})
"""

LIGHT = """
    import time, pytest

    @pytest.mark.parametrize("i", range({n}))
    def test_light(i):
        time.sleep({s})
"""


class Suite:
    def __init__(self, root, heavy_first, p):
        self.root, self.p = root, p
        os.makedirs(root)
        w = lambda name, text: open(os.path.join(root, name), "w").write(  # noqa: E731
            textwrap.dedent(text))
        w("pytest.ini", "[pytest]\nmarkers =\n    llm: heavy\n")
        w("conftest.py", CONFTEST.format(mib=p.model_mib))
        # file names decide the collection order
        w(("test_0_heavy.py" if heavy_first else "test_z_heavy.py"),
          HEAVY.format(n=p.heavy, s=p.heavy_s))
        files = 8
        for f in range(files):
            w(f"test_light_{f}.py", LIGHT.format(n=p.light // files, s=p.light_s))


def measure(args, cwd, env):
    """(exit code, wall seconds, peak RSS bytes of the process tree)."""
    t0 = time.monotonic()
    proc = subprocess.Popen(args, cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    peak, done = 0, threading.Event()

    def sample():
        nonlocal peak
        while not done.is_set():
            peak = max(peak, _native.tree_rss(proc.pid) or 0)
            done.wait(0.02)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    out = proc.stdout.read()
    proc.wait()
    wall = time.monotonic() - t0
    done.set()
    t.join()
    return proc.returncode, wall, peak, out


CONFIGS = [
    ("heavylock, lane", []),
    ("heavylock, --heavylock-lane=off", ["--heavylock-lane=off"]),
    ("no plugin (-p no:heavylock)", ["-p", "no:heavylock"]),
    ("--dist loadgroup (-p no:heavylock)", ["-p", "no:heavylock", "--dist", "loadgroup"]),
]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="a short form for CI (< 1 minute)")
    ap.add_argument("--reps", type=int, default=None)
    ap.add_argument("--python", default=sys.executable,
                    help="the interpreter that runs pytest (default: this one)")
    p = ap.parse_args()
    p.python = os.path.abspath(p.python)  # the runs change directory (no realpath: venvs)
    if p.quick:
        p.heavy, p.heavy_s, p.light, p.light_s, p.model_mib = 4, 0.5, 48, 0.05, 100
        orders, p.reps = [False], p.reps or 1
    else:
        p.heavy, p.heavy_s, p.light, p.light_s, p.model_mib = 8, 1.0, 240, 0.05, 300
        orders, p.reps = [False, True], p.reps or 2
    workers, slots = 4, 1
    versions = subprocess.run(
        [p.python, "-c", "import pytest, xdist; print(pytest.__version__, xdist.__version__)"],
        capture_output=True, text=True, check=True).stdout.split()

    tmp = tempfile.mkdtemp(prefix="heavylock-bench-lane-")
    t0 = time.perf_counter()
    bytearray(b"\x01") * (p.model_mib * 2**20)
    load_s = time.perf_counter() - t0
    heavy_work = p.heavy * p.heavy_s + load_s
    all_work = heavy_work + p.light * p.light_s
    bound_work = max(heavy_work / slots, all_work / workers)
    model = p.model_mib * 2**20
    print(f"heavy lane benchmark: {p.heavy} heavy tests of {p.heavy_s:g} s sharing a "
          f"{p.model_mib} MiB session fixture, {p.light} light tests of {p.light_s * 1000:.0f} ms, "
          f"-n {workers}; pytest {versions[0]}, pytest-xdist {versions[1]}, "
          f"Python {sys.version.split()[0]}; {p.reps} rep(s), alternated; medians\n")
    rows = []
    for heavy_first in orders:
        root = os.path.join(tmp, "first" if heavy_first else "last")
        Suite(root, heavy_first, p)
        log = os.path.join(root, "models.log")
        env = {k: v for k, v in os.environ.items()
               if k not in ("RUN_HEAVY_INTEGRATION", "PYTEST_ADDOPTS", "HEAVYLOCK_LANE",
                            "HEAVYLOCK_SLOTS")}
        env.update(HEAVYLOCK_PATH=os.path.join(root, ".llm_load.lock"), BENCH_MODEL_LOG=log)
        base = [p.python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", str(workers)]
        res = {name: {"wall": [], "peak": [], "startup": [], "baseline": [], "copies": []}
               for name, _ in CONFIGS}
        for _ in range(p.reps):
            for name, extra in CONFIGS:
                rc, wall, peak, out = measure(base + extra + ["-k", "no_test_has_this_name"],
                                              root, env)
                if rc != 5:  # "no tests collected / all deselected"
                    sys.exit(f"{name}: the empty run failed ({rc}):\n{out[-2000:]}")
                res[name]["startup"].append(wall)
                res[name]["baseline"].append(peak)
                if os.path.exists(log):
                    os.unlink(log)
                rc, wall, peak, out = measure(base + extra, root, env)
                if rc != 0:
                    sys.exit(f"{name}: the run failed ({rc}):\n{out[-3000:]}")
                res[name]["wall"].append(wall)
                res[name]["peak"].append(peak)
                res[name]["copies"].append(len(open(log).read().split()))
        for name, _ in CONFIGS:
            r = {k: statistics.median(v) for k, v in res[name].items()}
            bound = bound_work + r["startup"]
            rows.append((name, "first" if heavy_first else "last", r["wall"], bound,
                         r["wall"] / bound, r["peak"], r["baseline"],
                         r["peak"] / (r["baseline"] + model), max(res[name]["copies"])))
    print("| run | heavy collected | wall time | lower bound | wall / lower bound "
          "| peak RSS | baseline | peak / (baseline + one model) | model copies |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, order, wall, bound, rw, peak, baseline, rp, copies in rows:
        print(f"| {name} | {order} | {wall:.2f} s | {bound:.2f} s | {rw:.2f}x "
              f"| {peak / 2**20:.0f} MiB | {baseline / 2**20:.0f} MiB | {rp:.2f}x | {copies} |")
    print(f"\nlower bound = max({heavy_work:.2f} s heavy / {slots} slot, {all_work:.2f} s all / "
          f"{workers} workers) + startup (an empty run of the same command); "
          f"one model = {p.model_mib} MiB, loaded in {load_s:.2f} s")
    lane = [r for r in rows if r[0] == "heavylock, lane"]
    group = {r[1]: r for r in rows if r[0].startswith("--dist loadgroup")}
    for r in lane:
        g = group[r[1]]
        if g[8] > 1:
            verdict = (f"loadgroup did not keep the group on one worker here ({g[8]} model "
                       "copies; pytest-xdist #1386): no peer to beat on this pytest")
        else:
            ahead = r[4] <= g[4] * 1.02 and r[7] <= g[7] * 1.02  # within 2%: a tie
            verdict = f"{'ahead of or level with' if ahead else 'BEHIND'} loadgroup"
        print(f"lane, heavy collected {r[1]}: makespan {r[4]:.2f}x (target <= 1.05x), "
              f"peak {r[7]:.2f}x (target <= 1.05x); loadgroup {g[4]:.2f}x, {g[7]:.2f}x: "
              f"{verdict}")
    print("(the bound assumes one heavy test at a time: a run with several model copies "
          "can beat it, at the price of the memory)")


if __name__ == "__main__":
    main()
