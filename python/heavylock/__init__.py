"""heavylock: heavy work (loading big local models) one process at a time.

The engine is libheavylock (C); this package is its Python face and the
pytest plugin (``heavylock.plugin``, registered as ``heavylock``).

    from heavylock import open_lock, resolve_path
    path, source, why = resolve_path()
    lk = open_lock(path)
    if lk.acquire(timeout=30):
        try:
            ...  # load the model
        finally:
            lk.release()
"""

from heavylock.backends import (BACKENDS, available_backend, open_lock, resolve_path,
                                status)

__version__ = "0.1.0"
__all__ = ["BACKENDS", "available_backend", "open_lock", "resolve_path", "status",
           "__version__"]
