"""The main job, end to end: the example suite with -n 4, opted out, then
opted in without heavylock, with the lock alone, with the heavy lane and
with slots admitted by memory (--heavylock-slots=auto),
side by side (wall time and peak RSS of the whole process tree, sampled
every 20 ms), then the heavylock summary and the timeline picture.

Usage: python run_demo.py MODEL.gguf [--workers 4] [--timeline PATH.svg]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
import time

from heavylock import _native

HERE = os.path.dirname(os.path.abspath(__file__))


def run(args, env, label):
    """Run pytest; return (exit code, wall seconds, peak tree RSS bytes, output)."""
    print(f"\n=== {label}\n$ {' '.join(args)}", flush=True)
    t0 = time.monotonic()
    p = subprocess.Popen(args, cwd=HERE, env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)
    peak = 0
    done = threading.Event()

    def sample():
        nonlocal peak
        while not done.is_set():
            peak = max(peak, _native.tree_rss(p.pid) or 0)
            done.wait(0.02)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    out = p.stdout.read()
    p.wait()
    done.set()
    t.join()
    wall = time.monotonic() - t0
    tail = [ln for ln in out.splitlines() if ln.strip()][-14:]
    print("\n".join("   " + ln for ln in tail), flush=True)
    return p.returncode, wall, peak, out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--workers", default="4")
    ap.add_argument("--timeline", default=os.path.join(HERE, "timeline.svg"))
    a = ap.parse_args()
    a.timeline = os.path.abspath(a.timeline)
    base = {k: v for k, v in os.environ.items()
            if k not in ("RUN_HEAVY_INTEGRATION", "LOCAL_MODEL_PATH", "HEAVYLOCK_PATH")}
    pytest = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", a.workers]

    rc, wall, peak, _ = run(pytest, base, "1. default run (opted out): fast tests only")
    if rc != 0:
        sys.exit(f"default run failed ({rc})")
    print(f"   -> {wall:.1f} s, peak RSS {peak / 2**20:.0f} MiB")

    heavy = {**base, "RUN_HEAVY_INTEGRATION": "1", "LOCAL_MODEL_PATH": os.path.abspath(a.model),
             "USE_LOCAL_LLM": "1"}
    # The lane is heavylock's default under -n; the lock alone is the
    # --heavylock-lane=off row.  The timeline shows the lane run.
    runs = [("without heavylock (-p no:heavylock)", ["-p", "no:heavylock"]),
            ("with heavylock, the lock alone (--heavylock-lane=off)", ["--heavylock-lane=off"]),
            ("with heavylock, heavy lane (default)", [f"--heavylock-timeline={a.timeline}"]),
            # admission by memory: each heavy test weighs the GGUF model's
            # estimate (no cache here, so nothing measured), and as many lanes
            # as those weights fit in the memory free now (at most workers - 1)
            ("with heavylock, slots by memory (--heavylock-slots=auto)",
             ["--heavylock-slots=auto"])]
    results = []
    for name, extra in runs:
        rc, wall, peak, _ = run(pytest + extra, heavy, f"2. opted in, {name}")
        if rc != 0:
            sys.exit(f"opted-in run {name} failed ({rc})")
        results.append((name, wall, peak))

    _, w0, p0 = results[0]
    print("\n=== 3. side by side (opted in, -n %s, real model on the CPU)" % a.workers)
    print("| run | wall time | peak RSS of the process tree | vs without heavylock |")
    print("|---|---:|---:|---:|")
    for name, wall, peak in results:
        print(f"| {name} | {wall:.1f} s | {peak / 2**20:.0f} MiB | "
              f"{wall / w0:.2f}x time, {peak / p0:.2f}x memory |")
    print(f"\ntimeline picture: {a.timeline}")


if __name__ == "__main__":
    main()
