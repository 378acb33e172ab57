"""The rule that names a dead worker's cause (heavylock.deaths): "out of
memory" only when an OOM-kill counter covering the worker rose and it died
by SIGKILL (or its status is unknown).  The counters here are files of the
kernel's format in tmp (this machine's memory controller is cgroup v1 under
the session's own cgroup, which a test must not fill); the plugin's tests
kill real workers (test_plugin_manners.py)."""

import signal

from heavylock import deaths


def watch_on(tmp_path, count):
    f = tmp_path / "memory.events"
    f.write_text(f"low 0\nhigh 0\nmax 3\noom 1\noom_kill {count}\n")
    w = deaths.Watch(None)
    w.before = [(str(f), count)]
    return w, f


def test_sigkill_after_the_oom_kill_count_rose_is_out_of_memory(tmp_path):
    w, f = watch_on(tmp_path, 2)
    f.write_text("low 0\nhigh 0\nmax 9\noom 2\noom_kill 3\n")
    cause, evidence = w.cause(-signal.SIGKILL)
    assert cause == "out of memory"
    assert evidence == f"killed by the kernel's OOM killer: oom_kill in {f} went from 2 to 3"
    assert w.cause(None)[0] == "out of memory"  # status unknown: the kernel's word stands


def test_another_signal_is_named_even_when_the_count_rose(tmp_path):
    w, f = watch_on(tmp_path, 2)
    f.write_text("oom_kill 3\n")  # another process of the cgroup was the OOM killer's victim
    assert w.cause(-signal.SIGSEGV) == ("killed by SIGSEGV", "Segmentation fault; exit status -11")


def test_sigkill_without_a_rise_is_not_out_of_memory(tmp_path):
    w, f = watch_on(tmp_path, 2)
    cause, evidence = w.cause(-signal.SIGKILL)
    assert cause == "killed by SIGKILL"
    assert evidence == f"Killed; not out of memory: {f} oom_kill unchanged"
    assert deaths.Watch(None).cause(None) == (deaths.UNKNOWN, "its exit status could not be read")
    assert deaths.Watch(None).cause(4)[0] == "exited with status 4"
