"""Runs test suites (make targets) one after another, every one of them even
when an earlier one failed, with their output as it comes, then one summary:
each suite's result, counts and time.  Exits 1 if any suite failed.

Usage: python tests/suites.py TARGET...   (MAKE names make; `make test` sets it)

Stdlib only: it runs before the venv exists."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time

# pytest's last line: "3 failed, 200 passed, 4 skipped in 12.34s"
PYTEST_COUNTS = re.compile(r"((?:\d+ [a-z]+(?:, )?)+) in [\d.]+s")
# meson test's closing block: "Ok:  40", "Fail:  1", ...
MESON_COUNT = re.compile(r"^(Ok|Expected Fail|Fail|Unexpected Pass|Skipped|Timeout):\s+(\d+)\s*$",
                         re.M)


def counts(output: str) -> str:
    meson = [(k, int(n)) for k, n in MESON_COUNT.findall(output)]
    if meson:
        return ", ".join(f"{n} {k.lower()}" for k, n in meson if n or k == "Ok")
    found = PYTEST_COUNTS.findall(output)
    return found[-1].strip(", ") if found else "no counts (see its output)"


def run(make: list[str], target: str) -> tuple[int, float, str]:
    print(f"\n===== {target}", flush=True)
    t0 = time.monotonic()
    p = subprocess.Popen([*make, "--no-print-directory", target], stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT)
    assert p.stdout is not None
    chunks = []
    out = sys.stdout.buffer
    while True:
        data = os.read(p.stdout.fileno(), 65536)  # as it comes: pytest's dots have no newline
        if not data:
            break
        chunks.append(data)
        out.write(data)
        out.flush()
    rc = p.wait()
    return rc, time.monotonic() - t0, b"".join(chunks).decode("utf-8", "replace")


def main(targets: list[str]) -> int:
    if not targets:
        sys.exit("usage: suites.py TARGET...")
    make = (os.environ.get("MAKE") or "make").split()
    rows = []
    for target in targets:
        rc, seconds, output = run(make, target)
        result = "passed" if rc == 0 else f"FAILED (exit {rc})"
        rows.append((target, result, counts(output), seconds))
    failed = [r[0] for r in rows if r[1] != "passed"]
    print("\n===== summary")
    w = max(len(r[0]) for r in rows)
    wr = max(len(r[1]) for r in rows)
    for target, result, said, seconds in rows:
        print(f"{target:<{w}}  {result:<{wr}}  {seconds:7.1f} s  {said}")
    if failed:
        print(f"{len(failed)} of {len(rows)} suites failed: {' '.join(failed)}")
        return 1
    print(f"all {len(rows)} suites passed")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
