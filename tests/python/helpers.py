"""Helpers shared by the tests: recorded intervals, waiting, status."""
import json
import subprocess
import sys
import time

RECORD = (
    "import os, sys, time\n"
    "t0 = time.time()\n"
    "time.sleep(float(sys.argv[2]))\n"
    "t1 = time.time()\n"
    "with open(sys.argv[1], 'a') as f:\n"
    "    f.write(f'{os.getpid()} {t0!r} {t1!r}\\n')\n"
)


def record_cmd(log, hold=0.05):
    """A command that records the interval it ran in: 'pid start end'."""
    return [sys.executable, "-c", RECORD, str(log), str(hold)]


def read_intervals(log):
    out = []
    for line in open(log):
        pid, a, b = line.split()
        out.append((float(a), float(b), int(pid)))
    return sorted(out)


def overlaps(intervals):
    """Pairs of intervals that overlap (sorted by start)."""
    return [(a, b) for a, b in zip(intervals, intervals[1:]) if b[0] < a[1]]


def wait_for(pred, timeout=10.0, what="condition"):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        v = pred()
        if v:
            return v
        time.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


def held_by(cli, lock):
    """pid holding `lock` per `heavylock status --json`, or 0."""
    r = subprocess.run([cli, "status", "--lock", str(lock), "--json"], capture_output=True,
                       text=True)
    data = json.loads(r.stdout)
    return data["holder"]["pid"] if data["held"] else 0


def toy_gguf(path, ctx=4096, layers=16, embd=2048, heads=32, kv_heads=8, data=10 << 20):
    """A GGUF v3 header with the keys the estimate reads, then `data` bytes."""
    import struct

    def s(x):
        return struct.pack("<Q", len(x)) + x.encode()

    kvs = [("toy.context_length", ctx), ("toy.block_count", layers),
           ("toy.embedding_length", embd), ("toy.attention.head_count", heads),
           ("toy.attention.head_count_kv", kv_heads)]
    out = b"GGUF" + struct.pack("<IQQ", 3, 0, len(kvs) + 1)
    for k, v in kvs:
        out += s(k) + struct.pack("<II", 4, v)
    out += s("general.architecture") + struct.pack("<I", 8) + s("toy")
    out += b"\0" * (-len(out) % 32)
    with open(path, "wb") as f:
        f.write(out)
        f.truncate(len(out) + data)
