"""Why an xdist worker died, from evidence only: the status it exited with
(the signal that killed it) and the kernel's count of out-of-memory kills
for the cgroup it ran in, read when it started and again when it died.

"Out of memory" only when the kernel says so: the worker was killed by
SIGKILL (or its status is unknown) and an OOM-kill counter covering it
went up (cgroup v2 ``memory.events`` of its cgroup, which counts its
descendants too; cgroup v1 ``memory.oom_control``; ``/proc/vmstat`` when it
runs in the root cgroup).  Otherwise the signal by name, or the exit status,
or "crashed (cause unknown)"."""

from __future__ import annotations

import os
import signal

UNKNOWN = "crashed (cause unknown)"


def _cgroup_mounts():
    """{"v2": mount point, "v1": memory controller's mount point}."""
    mounts = {}
    try:
        with open("/proc/self/mountinfo", encoding="utf-8") as f:
            for line in f:
                left, _, right = line.partition(" - ")
                fields, rfields = left.split(), right.split()
                if len(fields) < 5 or len(rfields) < 3:
                    continue
                if rfields[0] == "cgroup2":
                    mounts.setdefault("v2", fields[4])
                elif rfields[0] == "cgroup" and "memory" in rfields[2].split(","):
                    mounts.setdefault("v1", fields[4])
    except OSError:
        pass
    return mounts


def _read_count(path, key):
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                k, _, v = line.partition(" ")
                if k == key:
                    return int(v)
    except (OSError, ValueError):
        pass
    return None


def oom_counters(pid):
    """The kernel's OOM-kill counters that cover process `pid`, as
    [(file, count)]: its cgroup's, else the machine's."""
    mounts = _cgroup_mounts()
    found = []
    try:
        with open(f"/proc/{pid}/cgroup", encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError:
        lines = []
    for line in lines:
        hier, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if path in ("", "/"):
            continue  # the root cgroup: no file of its own (the machine's count below)
        if hier == "0" and controllers == "" and "v2" in mounts:
            f = os.path.join(mounts["v2"], path.lstrip("/"), "memory.events")
            key = "oom_kill"
        elif "memory" in controllers.split(",") and "v1" in mounts:
            f = os.path.join(mounts["v1"], path.lstrip("/"), "memory.oom_control")
            key = "oom_kill"
        else:
            continue
        n = _read_count(f, key)
        if n is not None:
            found.append((f, n))
    if not found:
        n = _read_count("/proc/vmstat", "oom_kill")
        if n is not None:
            found.append(("/proc/vmstat", n))
    return found


class Watch:
    """One worker process: its OOM counters when it started."""

    def __init__(self, pid):
        self.pid = pid
        self.before = oom_counters(pid) if pid else []

    def cause(self, status):
        """(cause, evidence) for a worker that exited with `status` (a
        Popen returncode: -N for signal N; None when unknown)."""
        rose = []
        for f, n in self.before:
            now = _read_count(f, "oom_kill")
            if now is not None and now > n:
                rose.append(f"oom_kill in {f} went from {n} to {now}")
        if rose and (status is None or status == -signal.SIGKILL):
            return "out of memory", "killed by the kernel's OOM killer: " + "; ".join(rose)
        if status is None:
            return UNKNOWN, "its exit status could not be read"
        if status < 0:
            name, text = signal_name(-status)
            if -status == signal.SIGKILL:
                said = (", ".join(f"{f} oom_kill unchanged" for f, _ in self.before)
                        if self.before else "no OOM-kill counter readable")
                return f"killed by {name}", f"{text}; not out of memory: {said}"
            return f"killed by {name}", f"{text}; exit status {status}"
        return f"exited with status {status}", "the worker process ended by itself"


def signal_name(sig):
    """("SIGSEGV", "Segmentation fault")"""
    try:
        return signal.Signals(sig).name, signal.strsignal(sig) or ""
    except ValueError:
        return f"signal {sig}", "unknown signal"


def process_of(node):
    """The worker's process (a subprocess.Popen) behind an xdist node, or
    None (not a local popen worker: ssh, socket, or a changed execnet)."""
    io = getattr(getattr(node, "gateway", None), "_io", None)
    p = getattr(io, "popen", None)
    return p if p is not None and hasattr(p, "wait") else None


def exit_status(node, timeout=5.0):
    """The worker's exit status once it is gone (its channel closed first,
    so give the process a moment to end), or None."""
    p = process_of(node)
    if p is None:
        return None
    try:
        return p.wait(timeout)
    except Exception:  # still running (an internal error, not a death) or not ours to wait
        return None
