"""heavylock: heavy work (loading big local models) one process at a time.

The engine is libheavylock (C); this package is its Python face and the
pytest plugin (``heavylock.plugin``, registered as ``heavylock``).

    from heavylock import open_lock, resolve_path, Timeout
    path, source, why = resolve_path()
    with open_lock(path, timeout=30):      # Timeout (a TimeoutError) after 30 s
        ...                                # load the model

    lk = open_lock(path)
    if lk.acquire(timeout=30):             # the primitive: True / False
        try:
            ...
        finally:
            lk.release()

Several heavy jobs at once, admitted by memory (native backend)::

    lk = open_lock(path, slots=0)          # 0: as many as memory allows
    lk.set_weight(2 << 30, "estimated")    # this job's expected peak
    lk.acquire(600, on_wait=lambda st, waited: print(st["holders"]))

A ``postgresql://`` URL instead of a path shares one lock across machines;
``lk.check()`` raises :class:`LockLost` when its session ended.

asyncio: ``async with heavylock.aio.open_lock(path): ...``.
"""

from heavylock.backends import (BACKENDS, BaseLock, FallbackWarning, Held, LockLost, OnWait,
                                PidfileWarning, SelfDeadlock, Timeout, available_backend,
                                describe_holder, is_url, open_lock, resolve_path, status)

__version__ = "0.1.0"
__all__ = ["BACKENDS", "BaseLock", "FallbackWarning", "Held", "LockLost", "OnWait",
           "PidfileWarning", "SelfDeadlock", "Timeout", "available_backend", "describe_holder",
           "is_url", "open_lock", "resolve_path", "status", "__version__"]
