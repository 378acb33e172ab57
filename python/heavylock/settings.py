"""The plugin's settings: command line > environment > ini > default, each
bad value a usage error that names where it came from."""

from __future__ import annotations

import os

import pytest

from heavylock import backends

DEFAULT_MARKERS = ["llm"]
DEFAULT_PATHS = ["tests/scripts"]
DEFAULT_TOKENS = ["LocalLLMClient", "LocalLLMProvider", "LOCAL_MODEL_PATH", "USE_LOCAL_LLM"]
TRUE_VALUES = ("1", "true", "yes")
FALSE_VALUES = ("0", "false", "no", "")

RUN_HEAVY_HELP = ("serialize every test and opt in to heavy tests (the command-line twin "
                  "of RUN_HEAVY_INTEGRATION=1)")
PATH_HELP = ("the lock file (default: $HEAVYLOCK_PATH, else .llm_load.lock next to "
             "$LOCAL_MODEL_PATH, else <rootdir>/models/.llm_load.lock)")
TIMEOUT_HELP = ("fail a test's setup when it waited this many seconds for the lock "
                "(default: wait as long as it takes, saying who holds it)")
BACKEND_HELP = "lock backend: native, filelock, fcntl or pidfile (default: best available)"


def addoptions(parser):
    group = parser.getgroup("heavylock", "heavy-test serialization (heavylock)")
    group.addoption("--run-heavy", action="store_true", default=None, help=RUN_HEAVY_HELP)
    group.addoption("--heavylock-path", default=None, metavar="PATH", help=PATH_HELP)
    group.addoption("--heavylock-timeout", default=None, metavar="SECONDS", help=TIMEOUT_HELP)
    group.addoption("--heavylock-backend", default=None, metavar="NAME", help=BACKEND_HELP)
    group.addoption("--heavylock-explain", action="store_true", default=False,
                    help="show each test's verdict (heavy or light) and the rule that decided it")
    group.addoption("--heavylock-report", default=None, metavar="PATH",
                    help="write every test's lock wait and hold times as JSON")
    group.addoption("--heavylock-timeline", default=None, metavar="PATH",
                    help="draw the run (.svg or .html): tests per worker, lock waits, memory")
    parser.addini("heavylock_run_heavy", RUN_HEAVY_HELP, type="bool", default=False)
    parser.addini("heavylock_path", PATH_HELP, default="")
    parser.addini("heavylock_timeout", TIMEOUT_HELP, default="")
    parser.addini("heavylock_backend", BACKEND_HELP, default="")
    parser.addini("heavylock_markers", "marker names that make a test heavy",
                  type="linelist", default=DEFAULT_MARKERS)
    parser.addini("heavylock_paths", "directories whose tests are heavy (relative paths)",
                  type="linelist", default=DEFAULT_PATHS)
    parser.addini("heavylock_tokens", "source tokens that make a test heavy",
                  type="linelist", default=DEFAULT_TOKENS)


def setting(config, option, env, ini):
    """(value, where it came from): command line > environment > ini."""
    v = config.getoption(option)
    if v is not None:
        return v, "--" + option.replace("_", "-")
    v = os.environ.get(env) if env else None
    if v is not None:
        return v, env
    v = config.getini(ini)
    if v not in (None, ""):
        return v, f"ini option {ini}"
    return None, None


def parse_run_heavy(config) -> bool:
    if config.getoption("run_heavy"):
        return True
    v = os.environ.get("RUN_HEAVY_INTEGRATION")
    if v is not None:
        low = v.strip().lower()
        if low in TRUE_VALUES:
            return True
        if low in FALSE_VALUES:
            return False
        raise pytest.UsageError(
            f"RUN_HEAVY_INTEGRATION={v!r} is not a yes/no value: use 1, true or yes to run "
            "heavy tests (serialized), 0, false, no or empty for fast tests only")
    return bool(config.getini("heavylock_run_heavy"))


def parse_timeout(config):
    v, where = setting(config, "heavylock_timeout", "HEAVYLOCK_TIMEOUT", "heavylock_timeout")
    if v is None:
        return None
    try:
        t = float(v)
    except ValueError:
        t = float("nan")
    if not t > 0 or t == float("inf"):
        raise pytest.UsageError(f"{where}: invalid timeout {v!r}: expected a number of "
                                "seconds greater than 0")
    return t


def resolve_lock_path(config):
    """(path, where): --heavylock-path > HEAVYLOCK_PATH > LOCAL_MODEL_PATH >
    ini heavylock_path > <rootdir>/models/.llm_load.lock."""
    opt = config.getoption("heavylock_path")
    if opt is not None:
        if not opt:
            raise pytest.UsageError("--heavylock-path is empty; name a lock file")
        return os.path.abspath(opt), "--heavylock-path"
    ini = config.getini("heavylock_path")
    env_set = "HEAVYLOCK_PATH" in os.environ or "LOCAL_MODEL_PATH" in os.environ
    if ini and not env_set:
        return str(config.rootpath / ini), f"ini option heavylock_path in {config.inipath}"
    try:
        path, source, _why = backends.resolve_path(str(config.rootpath))
    except ValueError as exc:
        raise pytest.UsageError(str(exc)) from None
    return path, source


class Settings:
    """Every setting of one run, parsed and checked once at configure time."""

    def __init__(self, config):
        self.run_heavy = parse_run_heavy(config)
        self.timeout = parse_timeout(config)
        v, where = setting(config, "heavylock_backend", "HEAVYLOCK_BACKEND", "heavylock_backend")
        try:
            self.backend = backends.choose_backend(v, where or "HEAVYLOCK_BACKEND")
        except ValueError as exc:
            raise pytest.UsageError(str(exc)) from None
        self.path, self.path_source = resolve_lock_path(config)
        self.markers = [m for m in config.getini("heavylock_markers") if m]
        self.paths = [p.strip("/") for p in config.getini("heavylock_paths") if p.strip("/")]
        self.tokens = [t for t in config.getini("heavylock_tokens") if t]
        self.worker = os.environ.get("PYTEST_XDIST_WORKER", "")

    def where(self):
        return f"{self.path} (from {self.path_source}, backend {self.backend})"
