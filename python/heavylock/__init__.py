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

asyncio: ``async with heavylock.aio.open_lock(path): ...``.
"""

from heavylock.backends import (BACKENDS, BaseLock, FallbackWarning, Held, PidfileWarning,
                                Timeout, available_backend, describe_holder, open_lock,
                                resolve_path, status)

__version__ = "0.1.0"
__all__ = ["BACKENDS", "BaseLock", "FallbackWarning", "Held", "PidfileWarning", "Timeout",
           "available_backend", "describe_holder", "open_lock", "resolve_path", "status",
           "__version__"]
