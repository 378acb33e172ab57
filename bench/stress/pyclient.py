"""The stress test's Python client: N acquisitions through one Python lock.

    pyclient.py KIND LOCK LOG N MODE HOLD_US

KIND: native, filelock, fcntl, pidfile (heavylock's backends, through
heavylock.open_lock) or pypi-filelock (PyPI filelock used directly, as a
user would).  MODE: block, timed (50 ms slices), try (once, again after 1-16 ms).
Writes the same two lines per critical section as client.c.
"""
import os
import sys
import time
import warnings


def main():
    kind, lock, log, n, mode, hold_us = sys.argv[1:7]
    n, hold = int(n), int(hold_us) / 1e6
    if kind == "pypi-filelock":
        import filelock
        fl = filelock.FileLock(lock)

        def acquire(timeout):
            try:
                fl.acquire(timeout=timeout, poll_interval=0.005)
                return True
            except filelock.Timeout:
                return False
        release = fl.release
    else:
        import heavylock
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the pidfile backend warns
            lk = heavylock.open_lock(lock, kind)
        acquire = lk.acquire
        release = lk.release
    timeout = {"block": -1 if kind == "pypi-filelock" else None, "timed": 0.05, "try": 0}[mode]
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    pid = os.getpid()
    label = kind if kind == "pypi-filelock" else f"py-{kind}"
    for _ in range(n):
        t_req = time.monotonic()
        backoff = 0.001  # try-once users retry with backoff (1-16 ms), not a spin
        while not acquire(timeout):
            if mode == "try":
                time.sleep(backoff)
                backoff = min(backoff * 2, 0.016)
        t_acq = time.monotonic()
        os.write(fd, f"A {label} {mode} {pid} {t_req:.9f} {t_acq:.9f}\n".encode())
        time.sleep(hold)
        os.write(fd, f"R {pid} {t_acq:.9f} {time.monotonic():.9f}\n".encode())
        release()


if __name__ == "__main__":
    main()
