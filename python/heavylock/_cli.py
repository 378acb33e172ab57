"""The ``heavylock`` console script of the wheel: execs the C CLI that is
installed inside this package (``heavylock/heavylock``).

The binary is found next to the package that Python imported, so it works
wherever pip put both: a venv, ``--prefix``, ``--user`` or ``--target``.
(An ELF executable in the wheel's scripts would be wrapped by auditwheel in
a shim that looks under ``sysconfig``'s platlib: the venv's or the system's,
not where a ``--prefix``/``--user``/``--target`` install put it.)
"""

from __future__ import annotations

import os
import sys


def binary() -> str:
    """Path of the C CLI inside this package (it may not exist: an install
    without a C compiler, or Windows, has no CLI)."""
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "heavylock")


def main() -> None:
    exe = binary()
    if not os.access(exe, os.X_OK):
        sys.stderr.write(f"heavylock: the CLI binary is not installed ({exe} is missing): "
                         "this install of the package was built without a C compiler, or "
                         "for a platform without the CLI\n")
        raise SystemExit(69)  # EX_UNAVAILABLE, as the CLI uses it
    os.execv(exe, ["heavylock"] + sys.argv[1:])


if __name__ == "__main__":
    main()
