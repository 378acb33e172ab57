"""pytest-heavylock: heavy (local-LLM) tests one at a time, across processes
and xdist workers, under the file lock ``models/.llm_load.lock``.

Which tests take the lock (the first rule that matches decides):

1. a heavy marker: ``@pytest.mark.llm`` (more names: ini ``heavylock_markers``);
2. ``RUN_HEAVY_INTEGRATION`` is 1/true/yes (or ``--run-heavy``): every test;
3. the test file lies under ``tests/scripts/`` (ini ``heavylock_paths``);
4. the test requests the ``local_model_path`` fixture;
5. a token (``LocalLLMClient``, ``LocalLLMProvider``, ``LOCAL_MODEL_PATH``,
   ``USE_LOCAL_LLM``; ini ``heavylock_tokens``) appears in the source of the
   test function, of its class, or of a fixture it requests, followed
   through the fixtures those request in turn.  Autouse fixtures are not
   scanned (they run for every test).  Files that hold no token anywhere are
   skipped without parsing, and sources are cached per file and line.

A heavy test holds the lock from the start of its setup to the end of its
teardown.  Settings: command line > environment > ini > default.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import linecache
import os
import sys
import time
from pathlib import Path

import pytest

from heavylock import backends

DEFAULT_MARKERS = ["llm"]
DEFAULT_PATHS = ["tests/scripts"]
DEFAULT_TOKENS = ["LocalLLMClient", "LocalLLMProvider", "LOCAL_MODEL_PATH", "USE_LOCAL_LLM"]
TRUE_VALUES = ("1", "true", "yes")
FALSE_VALUES = ("0", "false", "no", "")
NOTICE_AFTER = 1.0     # first "waiting for" line after this many seconds
NOTICE_EVERY = 15.0    # then at most this often

RUN_HEAVY_HELP = ("serialize every test and opt in to heavy tests (the command-line twin "
                  "of RUN_HEAVY_INTEGRATION=1)")
PATH_HELP = ("the lock file (default: $HEAVYLOCK_PATH, else .llm_load.lock next to "
             "$LOCAL_MODEL_PATH, else <rootdir>/models/.llm_load.lock)")
TIMEOUT_HELP = ("fail a test's setup when it waited this many seconds for the lock "
                "(default: wait as long as it takes, saying who holds it)")
BACKEND_HELP = "lock backend: native, filelock, fcntl or pidfile (default: best available)"

STATE_KEY = pytest.StashKey["_State"]()
VERDICT_KEY = pytest.StashKey["tuple"]()


def pytest_addoption(parser):
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


# ---------------------------------------------------------------- settings

def _setting(config, option, env, ini):
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


def _parse_run_heavy(config) -> bool:
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


def _parse_timeout(config):
    v, where = _setting(config, "heavylock_timeout", "HEAVYLOCK_TIMEOUT", "heavylock_timeout")
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


def _resolve_lock_path(config):
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


# ---------------------------------------------------------------- state

class _State:
    def __init__(self, config):
        self.config = config
        self.run_heavy = _parse_run_heavy(config)
        self.timeout = _parse_timeout(config)
        v, where = _setting(config, "heavylock_backend", "HEAVYLOCK_BACKEND", "heavylock_backend")
        try:
            self.backend = backends.choose_backend(v, where or "HEAVYLOCK_BACKEND")
        except ValueError as exc:
            raise pytest.UsageError(str(exc)) from None
        self.path, self.path_source = _resolve_lock_path(config)
        self.markers = [m for m in config.getini("heavylock_markers") if m]
        self.paths = [p.strip("/") for p in config.getini("heavylock_paths") if p.strip("/")]
        self.tokens = [t for t in config.getini("heavylock_tokens") if t]
        self.worker = os.environ.get("PYTEST_XDIST_WORKER", "")
        self.scanner = _TokenScanner(self.tokens)
        self.lock = None
        self.events = []          # this process's tests
        self.remote_events = []   # from xdist workers (controller only)
        self.current = None       # event of the test holding the lock
        self.running = None       # event of the test in progress
        self.memory = []          # (wall time, bytes) of this process tree
        self._sampling = None

    def pytest_runtest_logfinish(self, nodeid, location):
        """After the test's teardown and its report: release the lock.  (A
        plain hook, not a teardown wrapper: it runs even when a fixture's
        finalizer raised, and costs less per test.)"""
        event, self.running = self.running, None
        now = time.time()  # taken before the release, so that no next holder precedes it
        if self.current is not None:
            self.lock.release()
            self.current["released"] = now
            self.current = None
        if event is not None:
            event["end"] = now

    def start_sampling(self, interval=0.1):
        """Sample the memory of this process and its children (xdist workers,
        model servers) until stop_sampling()."""
        import threading

        if backends._native is None:
            return
        stop = threading.Event()

        def run():
            pid = os.getpid()
            while not stop.is_set():
                rss = backends._native.tree_rss(pid)
                if rss:
                    self.memory.append((time.time(), rss))
                stop.wait(interval)

        t = threading.Thread(target=run, name="heavylock-memory", daemon=True)
        t.start()
        self._sampling = (stop, t)

    def stop_sampling(self):
        if self._sampling:
            stop, t = self._sampling
            stop.set()
            t.join()
            self._sampling = None

    def handle(self):
        if self.lock is None:
            self.lock = backends.open_lock(self.path, self.backend)
        return self.lock

    def write_notice(self, text):
        """Say something now, past pytest's capture (the test's setup is captured)."""
        capman = self.config.pluginmanager.getplugin("capturemanager")
        with capman.global_and_fixture_disabled() if capman else contextlib.nullcontext():
            sys.stderr.write(f"heavylock: {text}\n")
            sys.stderr.flush()

    def describe_holder(self):
        if backends._native is None:
            return "held by another process"
        try:
            return backends._native.describe_holder(self.path)
        except OSError:
            return "held by another process"

    def acquire(self, label):
        """Take the lock, saying who holds it while we wait.  Returns
        (wait_start, acquired) wall times."""
        lk = self.handle()
        lk.set_label(label)
        wait_start = time.time()
        start = time.monotonic()
        if lk.acquire(0):
            return wait_start, time.time()
        next_notice = NOTICE_AFTER
        while True:
            waited = time.monotonic() - start
            if waited >= next_notice:
                self.write_notice(f"waiting for {self.path}, {self.describe_holder()} "
                                  f"(waited {waited:.0f} s)")
                next_notice = waited + NOTICE_EVERY
            slice_ = next_notice - waited
            if self.timeout is not None:
                left = self.timeout - waited
                if left <= 0:
                    holder = self.describe_holder()
                    pytest.fail(f"heavylock: gave up after waiting {self.timeout:g} s for "
                                f"{self.path}, {holder} (--heavylock-timeout)", pytrace=False)
                slice_ = min(slice_, left)
            if lk.acquire(max(slice_, 0.01)):
                return wait_start, time.time()


class _TokenScanner:
    """Finds heavy tokens in sources, reading each file at most once."""

    def __init__(self, tokens):
        self.tokens = tokens
        self._file_has = {}
        self._source = {}
        self._own = os.path.abspath(__file__)

    def _file_may_have(self, filename):
        """False when the file holds no token at all (or is this plugin)."""
        hit = self._file_has.get(filename)
        if hit is None:
            if os.path.abspath(filename) == self._own:
                hit = False
            else:
                text = "".join(linecache.getlines(filename))
                hit = any(t in text for t in self.tokens)
            self._file_has[filename] = hit
        return hit

    def find(self, obj):
        """The first token in obj's source, or None."""
        obj = getattr(obj, "__func__", obj)
        if hasattr(obj, "__wrapped__"):
            obj = inspect.unwrap(obj)
        code = getattr(obj, "__code__", None)
        if code is not None:
            filename = code.co_filename
        else:
            try:
                filename = inspect.getsourcefile(obj)
            except TypeError:
                return None
        if not filename or not self._file_may_have(filename):
            return None
        key = (filename, code.co_firstlineno) if code else (filename, id(obj))
        src = self._source.get(key)
        if src is None:
            try:
                if code:
                    lines = linecache.getlines(filename)
                    src = "".join(inspect.getblock(lines[code.co_firstlineno - 1:]))
                else:
                    src = inspect.getsource(obj)
            except (OSError, TypeError, IndexError):
                src = ""
            self._source[key] = src
        for t in self.tokens:
            if t in src:
                return t
        return None


def _requested_fixtures(item):
    """Fixture definitions the test requests, followed transitively; autouse
    fixtures are left out unless requested by name."""
    info = getattr(item, "_fixtureinfo", None)
    if info is None:
        return
    defs = info.name2fixturedefs
    todo = list(getattr(info, "argnames", ()))
    for mark in item.iter_markers("usefixtures"):
        todo.extend(mark.args)
    seen = set()
    while todo:
        name = todo.pop(0)
        if name in seen or name == "request":
            continue
        seen.add(name)
        for fd in defs.get(name, ()):
            yield name, fd
            todo.extend(getattr(fd, "argnames", ()))


def _verdict(state, item):
    """(heavy, rule) for one test."""
    for name in state.markers:
        if item.get_closest_marker(name) is not None:
            return True, f"marker @pytest.mark.{name}"
    if state.run_heavy:
        return True, "RUN_HEAVY_INTEGRATION / --run-heavy (every test)"
    if state.paths:
        rel = "/" + item.nodeid.split("::", 1)[0]  # relative to rootdir, "/"-separated
        for p in state.paths:
            if f"/{p}/" in rel:
                return True, f"file under {p}/"
    fixtures = list(_requested_fixtures(item))
    if any(name == "local_model_path" for name, _ in fixtures):
        return True, "uses fixture local_model_path"
    if state.tokens:
        fn = getattr(item, "obj", None)
        if fn is not None:
            tok = state.scanner.find(fn)
            if tok:
                return True, f"token {tok} in test source"
        cls = getattr(item, "cls", None)
        if cls is not None:
            tok = state.scanner.find(cls)
            if tok:
                return True, f"token {tok} in class {cls.__name__}"
        for name, fd in fixtures:
            tok = state.scanner.find(fd.func)
            if tok:
                return True, f"token {tok} in fixture {name}"
    return False, "no rule matched"


def _get_verdict(item):
    v = item.stash.get(VERDICT_KEY, None)
    if v is None:
        v = _verdict(item.config.stash[STATE_KEY], item)
        item.stash[VERDICT_KEY] = v
    return v


# ---------------------------------------------------------------- hooks

def pytest_configure(config):
    # Markers first, so that --markers and --strict-markers work even when a
    # setting below is bad.
    names = config.getini("heavylock_markers") or DEFAULT_MARKERS
    for name in names:
        config.addinivalue_line(
            "markers", f"{name}: heavy test (loads a local model); runs under the heavylock "
            "file lock, one at a time across processes and xdist workers")
    state = config.stash[STATE_KEY] = _State(config)
    config.pluginmanager.register(state, "heavylock-state")
    if config.getoption("heavylock_timeline") and not hasattr(config, "workerinput"):
        state.start_sampling()


def pytest_collection_modifyitems(session, config, items):
    for item in items:
        _get_verdict(item)


def pytest_report_collectionfinish(config, start_path, items):
    if not (config.getoption("heavylock_explain") or config.getoption("collectonly")):
        return None
    heavy = [it for it in items if _get_verdict(it)[0]]
    lines = [f"heavylock: {len(heavy)} of {len(items)} tests take the lock "
             f"{_lock_where(config.stash[STATE_KEY])}"]
    if config.getoption("heavylock_explain"):
        for it in items:
            is_heavy, rule = _get_verdict(it)
            lines.append(f"  {'HEAVY' if is_heavy else 'light'}  {it.nodeid}  ({rule})")
    elif heavy:
        lines.append("  (--heavylock-explain shows which tests and why)")
    return lines


def _lock_where(state):
    return f"{state.path} (from {state.path_source}, backend {state.backend})"


def _skip_reason_for_model(state):
    if not state.run_heavy:
        return ("heavy test skipped: opt in with RUN_HEAVY_INTEGRATION=1 (or --run-heavy) "
                "and LOCAL_MODEL_PATH=/path/to/model.gguf")
    if not os.environ.get("LOCAL_MODEL_PATH"):
        return ("heavy test skipped: export LOCAL_MODEL_PATH=/path/to/model.gguf "
                "(the model file this test loads)")
    return None


def pytest_runtest_setup(item):
    """Runs after the skip/xfail marks are evaluated and before any fixture is
    set up: take the lock here so model loads in fixtures are covered."""
    state = item.config.stash[STATE_KEY]
    heavy, rule = _get_verdict(item)
    event = {"nodeid": item.nodeid, "worker": state.worker, "heavy": heavy, "rule": rule,
             "start": time.time(), "wait_start": None, "acquired": None, "released": None,
             "end": None}
    state.running = event
    state.events.append(event)
    if not heavy:
        return
    if "local_model_path" in item.fixturenames:
        reason = _skip_reason_for_model(state)
        if reason:
            pytest.skip(reason)  # no need to wait for the lock just to skip
    label = f"{item.nodeid} [{state.worker}]" if state.worker else item.nodeid
    event["wait_start"], event["acquired"] = state.acquire(label)
    state.current = event



def pytest_sessionfinish(session):
    state = session.config.stash.get(STATE_KEY, None)
    if state is None:
        return
    if state.lock is not None:
        state.lock.close()
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:  # an xdist worker: hand our events to the controller
        workeroutput["heavylock_events"] = json.dumps(state.events)
        return
    state.stop_sampling()
    events = sorted(state.events + state.remote_events, key=lambda e: e["start"])
    report = session.config.getoption("heavylock_report")
    if report:
        Path(report).write_text(json.dumps(
            {"lock": state.path, "source": state.path_source, "backend": state.backend,
             "events": events, "memory": state.memory}, indent=1))
    timeline = session.config.getoption("heavylock_timeline")
    if timeline:
        from heavylock import timeline as tl

        tl.write(timeline, events, state.memory,
                 title=f"heavylock timeline: {session.config.rootpath.name}")


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error):
    """xdist controller: collect a worker's events."""
    out = getattr(node, "workeroutput", None) or {}
    data = out.get("heavylock_events")
    if data:
        node.config.stash[STATE_KEY].remote_events.extend(json.loads(data))


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    state = config.stash.get(STATE_KEY, None)
    if state is None or getattr(config, "workeroutput", None) is not None:
        return
    events = [e for e in state.events + state.remote_events if e.get("acquired")]
    tr = terminalreporter
    if not events:
        if any(e["heavy"] for e in state.events + state.remote_events):
            tr.write_sep("-", "heavylock")
            tr.write_line("heavy tests were selected but none took the lock (all skipped)")
        return
    waits = [(e["acquired"] - e["wait_start"], e["nodeid"]) for e in events]
    holds = [((e["released"] or e["end"] or e["acquired"]) - e["acquired"], e["nodeid"])
             for e in events]
    worst = max(waits)
    tr.write_sep("-", "heavylock")
    tr.write_line(f"lock: {_lock_where(state)}")
    tr.write_line(f"{len(events)} tests took the lock: waited {sum(w for w, _ in waits):.2f} s "
                  f"in total, worst {worst[0]:.2f} s ({worst[1]}); held "
                  f"{sum(h for h, _ in holds):.2f} s in total")
    tr.write_line("slowest holders:")
    for held, nodeid in sorted(holds, reverse=True)[:5]:
        tr.write_line(f"  {held:7.2f} s  {nodeid}")
    if state.memory:
        tr.write_line(f"peak memory of the process tree: "
                      f"{max(b for _, b in state.memory) / 2**20:.0f} MiB")
    timeline = config.getoption("heavylock_timeline")
    if timeline:
        tr.write_line(f"timeline: {os.path.abspath(timeline)}")


# ---------------------------------------------------------------- fixtures

@pytest.fixture
def local_model_path(request):
    """The validated model file from ``LOCAL_MODEL_PATH``, as a ``Path``.
    Skips (saying what to export) without the opt-in or without the
    variable; errors when the opt-in is given but the path is bad.  A test
    that uses it is heavy."""
    state = request.config.stash[STATE_KEY]
    reason = _skip_reason_for_model(state)
    if reason:
        pytest.skip(reason)
    v = os.environ["LOCAL_MODEL_PATH"]
    p = Path(v)
    if not p.exists():
        pytest.fail(f"LOCAL_MODEL_PATH={v!r} does not exist (resolved against "
                    f"{os.getcwd()})", pytrace=False)
    if not p.is_file():
        pytest.fail(f"LOCAL_MODEL_PATH={v!r} is not a file; it must name the model file",
                    pytrace=False)
    return p.resolve()


class _ExplicitLock:
    """``with llm_lock:`` takes the lock for a block; a no-op inside a heavy
    test, which holds it already."""

    def __init__(self, state, item):
        self._state = state
        self._item = item
        self._mine = False

    def __enter__(self):
        state = self._state
        if state.lock is not None and state.lock.held:
            return self
        event = {"nodeid": self._item.nodeid + " (llm_lock)", "worker": state.worker,
                 "heavy": True, "rule": "llm_lock fixture", "start": time.time(),
                 "released": None, "end": None}
        event["wait_start"], event["acquired"] = state.acquire(event["nodeid"])
        state.events.append(event)
        self._event = event
        self._mine = True
        return self

    def __exit__(self, *exc):
        if self._mine:
            self._mine = False
            self._event["released"] = self._event["end"] = time.time()  # before others may win
            self._state.lock.release()
        return False


@pytest.fixture
def llm_lock(request):
    """A context manager that holds the heavylock lock for a block."""
    lk = _ExplicitLock(request.config.stash[STATE_KEY], request.node)
    yield lk
    lk.__exit__(None, None, None)
