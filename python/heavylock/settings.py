"""The plugin's settings: command line > environment > ini > default, each
bad value a usage error that names where it came from.  Every command-line
option carries the ``--heavylock-`` prefix, so that none collides with a
project's own (``--run-heavy`` is a common conftest option)."""

from __future__ import annotations

import math
import os
import re
import stat
import tempfile

import pytest

from heavylock import backends

DEFAULT_MARKERS = ["llm"]
DEFAULT_PATHS = ["tests/scripts"]
DEFAULT_TOKENS = ["LocalLLMClient", "LocalLLMProvider", "LOCAL_MODEL_PATH", "USE_LOCAL_LLM"]
# The seed's selection rules, in the order they are tried (see selection.py).
RULES = ("marker", "env", "path", "fixture", "token")
RULE_PRESETS = {"all": RULES, "strict": ("marker", "env")}
DEFAULT_RESIDENT_WARN_MIB = 64.0
# The one yes/no grammar of every switch (options, environment, ini): the
# seed's 1/true/yes, and on/off as pytest's own ini booleans read them.
TRUE_VALUES = ("1", "true", "yes", "on")
FALSE_VALUES = ("0", "false", "no", "off", "")

RUN_HEAVY_HELP = ("serialize every test and opt in to heavy tests (the command-line twin "
                  "of RUN_HEAVY_INTEGRATION=1)")
PATH_HELP = ("the lock file (default: $HEAVYLOCK_PATH, else .llm_load.lock next to "
             "$LOCAL_MODEL_PATH, else <rootdir>/models/.llm_load.lock)")
TIMEOUT_HELP = ("fail a test's setup when it waited this many seconds for the lock "
                "(default: wait as long as it takes, saying who holds it)")
BACKEND_HELP = "lock backend: native, filelock, fcntl or pidfile (default: best available)"
RULES_HELP = ("which selection rules apply: any of marker, env, path, fixture, token, or a "
              "preset: all (the default) or strict (= marker env)")
SLOTS_HELP = ("how many heavy tests may hold the lock at once, machine-wide: a number (1, the "
              "default, is the exclusive lock), or auto: admit by memory, each test by its "
              "weight (@pytest.mark.llm(mem=...), its peak measured in an earlier run, or its "
              "GGUF model's estimate); with xdist, also how many lanes")
BUDGET_HELP = ("the memory all heavy holders may use together, with --heavylock-slots other "
               "than 1: a size (512M, 2G, 1.5GiB) or auto (default: live memory, "
               "MemAvailable and the cgroup's limit); required for a postgresql:// lock")
RESIDENT_HELP = ("warn when a heavy test leaves more than this many MiB resident after it "
                 f"released the lock (default {DEFAULT_RESIDENT_WARN_MIB:g}; 0 turns it off)")


def addoptions(parser):
    group = parser.getgroup("heavylock", "heavy-test serialization (heavylock)")
    group.addoption("--heavylock-run-heavy", action="store_true", default=None,
                    help=RUN_HEAVY_HELP)
    group.addoption("--heavylock-path", default=None, metavar="PATH", help=PATH_HELP)
    group.addoption("--heavylock-timeout", default=None, metavar="SECONDS", help=TIMEOUT_HELP)
    group.addoption("--heavylock-backend", default=None, metavar="NAME", help=BACKEND_HELP)
    group.addoption("--heavylock-rules", default=None, metavar="RULES", help=RULES_HELP)
    group.addoption("--heavylock-resident-warn", default=None, metavar="MIB", help=RESIDENT_HELP)
    group.addoption("--heavylock-explain", action="store_true", default=False,
                    help="show each test's verdict (heavy or light) and the rule that decided it")
    group.addoption("--heavylock-report", default=None, metavar="PATH",
                    help="write every test's outcome, lock wait and hold times as JSON")
    group.addoption("--heavylock-timeline", default=None, metavar="PATH",
                    help="draw the run (.svg or .html): tests per worker, lock waits, memory")
    group.addoption("--heavylock-slots", default=None, metavar="N|auto", help=SLOTS_HELP)
    parser.addini("heavylock_slots", SLOTS_HELP, default="")
    group.addoption("--heavylock-budget", default=None, metavar="SIZE|auto", help=BUDGET_HELP)
    parser.addini("heavylock_budget", BUDGET_HELP, default="")
    parser.addini("heavylock_run_heavy", RUN_HEAVY_HELP, default="")
    parser.addini("heavylock_path", PATH_HELP, default="")
    parser.addini("heavylock_timeout", TIMEOUT_HELP, default="")
    parser.addini("heavylock_backend", BACKEND_HELP, default="")
    parser.addini("heavylock_rules", RULES_HELP, type="args", default=["all"])
    parser.addini("heavylock_resident_warn", RESIDENT_HELP, default="")
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
    if v not in (None, "", []):
        return v, f"ini option {ini}"
    return None, None


def parse_yes_no(value, where, meaning=("", "")) -> bool:
    """A switch's value from any source (True/False as given, or text), or a
    usage error naming the source and the value (`meaning`: what yes and
    what no do, for the message)."""
    if isinstance(value, bool):
        return value
    low = str(value).strip().lower()
    if low in TRUE_VALUES:
        return True
    if low in FALSE_VALUES:
        return False
    raise pytest.UsageError(f"{where}={value!r} is not a yes/no value: use 1, true, yes or on"
                            f"{meaning[0]}, 0, false, no, off or empty{meaning[1]}")


RUN_HEAVY_MEANING = (" to run heavy tests (serialized)", " for fast tests only")


def parse_run_heavy(config):
    """(opted in, the source that decided): --heavylock-run-heavy >
    RUN_HEAVY_INTEGRATION > ini heavylock_run_heavy."""
    if config.getoption("heavylock_run_heavy"):
        return True, "--heavylock-run-heavy"
    v = os.environ.get("RUN_HEAVY_INTEGRATION")  # set, even empty, it decides
    if v is not None:
        return (parse_yes_no(v, "RUN_HEAVY_INTEGRATION", RUN_HEAVY_MEANING),
                f"RUN_HEAVY_INTEGRATION={v.strip()}")
    v = config.getini("heavylock_run_heavy")
    if v:
        where = "ini option heavylock_run_heavy"
        return parse_yes_no(v, where, RUN_HEAVY_MEANING), f"{where} = {v.strip()}"
    return False, "default"


def parse_seconds(config, option, env, ini, what):
    """A positive number of seconds, or None when unset."""
    v, where = setting(config, option, env, ini)
    if v is None:
        return None
    try:
        t = float(v)
    except ValueError:
        t = float("nan")
    if not t > 0 or t == float("inf"):
        raise pytest.UsageError(f"{where}: invalid {what} {v!r}: expected a number of "
                                "seconds greater than 0")
    return t


def parse_timeout(config):
    return parse_seconds(config, "heavylock_timeout", "HEAVYLOCK_TIMEOUT", "heavylock_timeout",
                         "timeout")


def parse_rules(config):
    """The selection rules that apply, as a tuple in RULES order."""
    v, where = setting(config, "heavylock_rules", None, "heavylock_rules")
    if v is None:
        return RULES
    words = (v if isinstance(v, str) else " ".join(v)).replace(",", " ").split()
    chosen = set()
    for w in words:
        name = w.strip().lower()
        if name in RULE_PRESETS:
            chosen.update(RULE_PRESETS[name])
        elif name in RULES:
            chosen.add(name)
        else:
            raise pytest.UsageError(
                f"{where}: unknown rule {w!r}: expected any of {', '.join(RULES)}, or a "
                f"preset: {', '.join(RULE_PRESETS)}")
    return tuple(r for r in RULES if r in chosen)


def parse_resident_warn(config):
    """Bytes a heavy test may leave resident before it is named; 0 = off."""
    v, where = setting(config, "heavylock_resident_warn", "HEAVYLOCK_RESIDENT_WARN",
                       "heavylock_resident_warn")
    if v is None:
        return int(DEFAULT_RESIDENT_WARN_MIB * 2**20)
    text = str(v).strip()
    if text.lower().endswith("mib"):
        text = text[:-3]
    try:
        mib = float(text)
    except ValueError:
        mib = float("nan")
    if not mib >= 0 or mib == float("inf"):
        raise pytest.UsageError(f"{where}: invalid size {v!r}: expected a number of MiB "
                                "(0 turns the warning off)")
    return int(mib * 2**20)


def is_url(value) -> bool:
    """A lock server's URL (the PostgreSQL kind): passed through untouched,
    never made absolute, never a directory to create.  The C core's rule."""
    return backends.target_kind(str(value)) != "file"


# The C grammar of hl_size_parse (src/admit.c), for when the extension is not
# there: a number as strtod reads it (no sign, no space), then nothing (plain
# bytes: an integer) or K, M, G, T or B, an optional i, an optional B.
_SIZE_NUMBER = re.compile(r"([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?", re.ASCII)
_SIZE_UNITS = {"k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40, "b": 1}


def size_parse_py(text) -> int:
    """The pure-Python twin of the C parser (tests hold it to the same
    table of inputs)."""
    t = str(text)
    m = _SIZE_NUMBER.match(t)
    if m is None or "\0" in t or any(c in t for c in "xXpP"):
        raise ValueError(f"{text!r} is not a size")
    v, rest = float(m.group(0)), t[m.end():].lower()
    mult = 1
    if rest:
        mult = _SIZE_UNITS.get(rest[0], 0)
        tail = rest if rest[0] == "b" else rest[1:]
        tail = tail[1:] if tail[:1] == "i" else tail
        tail = tail[1:] if tail[:1] == "b" else tail
        if not mult or tail:
            raise ValueError(f"{text!r} is not a size")
    elif any(c in t for c in ".eE"):
        raise ValueError(f"{text!r} is not a size")  # plain bytes: an integer
    b = v * mult
    if not math.isfinite(v) or b >= 18446744073709551615.0:
        raise ValueError(f"{text!r} is not a size")
    return int(b + 0.5)


def size_parse(text) -> int:
    """Bytes from "512M", "2G", "1.5GiB" or plain bytes (ValueError when
    not a size): the C library's parser (one grammar for the CLI and the
    plugin), its Python twin when the extension cannot load."""
    native = getattr(backends._native, "size_parse", None)
    if native is not None:
        return int(native(str(text)))
    return size_parse_py(text)


def size_format(n) -> str:
    native = getattr(backends._native, "size_format", None)
    if native is not None:
        return native(int(n))
    for unit, k in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= k:
            return f"{n / k:.1f} {unit}"
    return f"{int(n)} B"


def parse_slots(config):
    """(slots, where): a number of at least 1, or 0 for auto (admission by
    memory)."""
    v, where = setting(config, "heavylock_slots", "HEAVYLOCK_SLOTS", "heavylock_slots")
    if v is None:
        return 1, "default"
    text = str(v).strip().lower()
    if text == "auto":
        return 0, where
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise pytest.UsageError(f"{where}: invalid number of slots {v!r}: expected a whole "
                                "number of at least 1, or auto")
    return n, where


def parse_budget(config):
    """(bytes, where): 0 is auto (live memory)."""
    v, where = setting(config, "heavylock_budget", "HEAVYLOCK_BUDGET", "heavylock_budget")
    if v is None or str(v).strip().lower() == "auto":
        return 0, where or "default"
    try:
        n = size_parse(v)
    except ValueError:
        n = 0
    if n <= 0:
        raise pytest.UsageError(f"{where}: invalid budget {v!r}: expected a size such as "
                                "512M, 2G or 1.5GiB, or auto (live memory)")
    return n, where


def missing_model(source):
    """When the lock's place came from a LOCAL_MODEL_PATH that names no file
    (yet): the problem, for the tests that need the model.  A fast run does
    not stop for a model still to be downloaded: the C policy puts the lock
    in the model's directory, created like the default models/."""
    v = os.environ.get("LOCAL_MODEL_PATH")
    if source != "LOCAL_MODEL_PATH" or not v or os.path.lexists(v):
        return None
    return (f"LOCAL_MODEL_PATH={v!r} does not exist (resolved against {os.getcwd()}); "
            "download the model there or point LOCAL_MODEL_PATH at it")


def resolve_lock_path(config):
    """(path, where, model problem or None): --heavylock-path > HEAVYLOCK_PATH >
    LOCAL_MODEL_PATH > ini heavylock_path > <rootdir>/models/.llm_load.lock."""
    opt = config.getoption("heavylock_path")
    if opt is not None:
        if not opt:
            raise pytest.UsageError("--heavylock-path is empty; name a lock file")
        try:  # redis://h/x is a usage error, not a directory "redis:"
            url = backends.check_target(opt, "--heavylock-path") != "file"
        except ValueError as exc:
            raise pytest.UsageError(str(exc)) from None
        if url:
            return opt, "--heavylock-path", None
        return os.path.abspath(opt), "--heavylock-path", None
    for env in ("HEAVYLOCK_URL", "HEAVYLOCK_PATH"):  # a server's URL: nothing to resolve
        if is_url(os.environ.get(env, "")):
            return os.environ[env], env, None
    ini = config.getini("heavylock_path")
    env_set = any(v in os.environ for v in ("HEAVYLOCK_URL", "HEAVYLOCK_PATH", "LOCAL_MODEL_PATH"))
    if ini and not env_set:
        where = f"ini option heavylock_path in {config.inipath}"
        try:
            url = backends.check_target(ini, "heavylock_path") != "file"
        except ValueError as exc:
            raise pytest.UsageError(f"{where}: {exc}") from None
        return (ini if url else str(config.rootpath / ini)), where, None
    try:
        path, source, _why = backends.resolve_path(str(config.rootpath))
    except ValueError as exc:
        raise pytest.UsageError(str(exc)) from None
    problem = missing_model(source)
    return path, f"{source} (model not there yet)" if problem else source, problem


def output_path(config, option, suffixes=None):
    """An output file's absolute path, its folder created now: a folder that
    cannot be made, or a suffix the file will not have, is a usage error at
    start-up, not a traceback (or a misnamed file) at the end."""
    v = config.getoption(option)
    if not v:
        return None
    path = os.path.abspath(v)
    flag = "--" + option.replace("_", "-")
    if suffixes and not path.lower().endswith(suffixes):
        shown = f"{', '.join(suffixes[:-1])} or {suffixes[-1]}"
        raise pytest.UsageError(f"{flag}={v!r}: the file must end in {shown} (what it is "
                                "written as)")
    if os.path.isdir(path):
        raise pytest.UsageError(f"{flag}={v!r} is a directory; name the file to write")
    if not hasattr(config, "workerinput"):  # only the process that writes it
        folder = os.path.dirname(path)
        try:
            os.makedirs(folder, exist_ok=True)
        except OSError as exc:
            raise pytest.UsageError(f"{flag}={v!r}: cannot create its folder "
                                    f"{folder}: {exc.strerror}") from None
        # written as a new file renamed into place (write_output): the folder
        # must take one, or every test would run before the write fails
        if not os.access(folder, os.W_OK | os.X_OK):
            raise pytest.UsageError(f"{flag}={v!r}: its folder {folder} is read-only for this "
                                    f"user (uid {os.getuid()})")
    return path


def write_output(path, text):
    """Write a report or timeline: a new file in the same folder renamed over
    `path`, so that a symbolic link (or another user's file) planted at `path`
    is replaced, never followed or truncated, and a reader never sees half."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".heavylock-", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _target_problem(path, backend):
    """Why the lock file at `path` could not be opened for locking (what the
    first heavy test would meet), or None.  Creates nothing: a run with no
    heavy test leaves no trace."""
    try:
        st = os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        d = os.path.dirname(path)
        while not os.path.lexists(d):  # the folders still to be made
            d = os.path.dirname(d)
        if not os.path.isdir(d):
            return f"{d} is not a directory, so the lock's folder cannot be created there"
        if not os.access(d, os.W_OK | os.X_OK):
            what = "the lock file" if d == os.path.dirname(path) else "its folder"
            return (f"cannot create {what} in {d}: it is read-only for this user "
                    f"(uid {os.getuid()})")
        return None
    except OSError as exc:
        return f"cannot look at it: {exc.strerror}"
    if stat.S_ISDIR(st.st_mode):
        return f"it is a directory; name the lock file itself, e.g. {path}/{backends.LOCK_NAME}"
    if stat.S_ISLNK(st.st_mode):
        return "it is a symbolic link (refused: a lock is never taken through one)"
    if not stat.S_ISREG(st.st_mode):
        return "it is not a regular file"
    # The native backend locks an existing file through a read-only
    # descriptor (flock needs no write access; only the holder record is
    # lost), as the CLI does: another user's 0644 lock file is shared, not
    # refused.  The other backends open it for writing.
    if backend != "native" and not os.access(path, os.W_OK):
        return f"it cannot be opened for writing by this user (uid {os.getuid()})"
    return None


def check_lock_target(settings):
    """The lock target, checked once at start-up: a usage error naming the
    value and its source, before any test runs, instead of the same
    traceback in every heavy test."""
    if settings.backend == "filelock":
        try:
            import filelock  # noqa: F401
        except ImportError:
            raise pytest.UsageError(
                f"{settings.backend_source}={settings.backend_value!r}: the filelock package is "
                "not installed (pip install filelock), or choose another backend") from None
    problem = (_server_problem(settings.path) if settings.remote
               else _target_problem(settings.path, settings.backend))
    if problem:
        raise pytest.UsageError(f"the lock {settings.shown_path} (from "
                                f"{settings.path_source}) cannot be used: "
                                f"{backends.printable(problem)}")


def _server_problem(url):
    """Why the lock server at `url` cannot be asked (one question: who holds
    the lock), or None."""
    if backends._native is None:
        return None  # open_lock says that URLs need the extension
    try:
        backends._native.status(url)
    except OSError as exc:
        return " ".join(str(exc.strerror or exc).split())  # libpq's words, on one line
    return None


class Settings:
    """Every setting of one run, parsed and checked once at configure time."""

    def __init__(self, config):
        self.run_heavy, self.run_heavy_source = parse_run_heavy(config)
        self.timeout = parse_timeout(config)
        v, where = setting(config, "heavylock_backend", "HEAVYLOCK_BACKEND", "heavylock_backend")
        self.backend_value, self.backend_source = v, where
        try:
            self.backend = backends.choose_backend(v, where or "HEAVYLOCK_BACKEND")
        except ValueError as exc:
            raise pytest.UsageError(str(exc)) from None
        self.path, self.path_source, self.model_problem = resolve_lock_path(config)
        self.rules = parse_rules(config)
        self.slots, self.slots_source = parse_slots(config)
        self.budget, self.budget_source = parse_budget(config)
        self.remote = is_url(self.path)
        # for every message and file we write: no password, no control byte
        self.shown_path = backends.printable(backends.redact(self.path))
        if self.remote and self.slots == 0 and not self.budget:
            raise pytest.UsageError(
                f"{self.slots_source}: slots auto on the lock server {self.shown_path} (from "
                f"{self.path_source}) need --heavylock-budget SIZE (or HEAVYLOCK_BUDGET): "
                "there is no live memory to read across machines")
        self.resident_warn = parse_resident_warn(config)
        self.markers = [m for m in config.getini("heavylock_markers") if m]
        self.paths = [p.strip("/") for p in config.getini("heavylock_paths") if p.strip("/")]
        self.tokens = [t for t in config.getini("heavylock_tokens") if t]
        self.report = output_path(config, "heavylock_report")
        self.timeline = output_path(config, "heavylock_timeline", (".svg", ".html", ".htm"))
        # an xdist worker's id; not one inherited by a pytest run inside a worker
        self.worker = (os.environ.get("PYTEST_XDIST_WORKER", "")
                       if hasattr(config, "workerinput") else "")
        if not hasattr(config, "workerinput"):  # once per run: the workers share it
            check_lock_target(self)

    def where(self):
        shown = f"{self.shown_path} (from {self.path_source}, backend {self.backend}"
        if self.slots != 1:
            budget = size_format(self.budget) if self.budget else "live memory"
            slots = "auto" if self.slots == 0 else str(self.slots)
            shown += f", slots {slots}, budget {budget}"
        return shown + ")"
