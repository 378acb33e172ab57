"""pytest-heavylock: heavy (local-LLM) tests one at a time, across processes
and xdist workers, under the file lock ``models/.llm_load.lock``.

This module is the wiring: options, hooks and fixtures.  The work lives in
``settings`` (what the user asked for), ``selection`` (which tests are
heavy), ``locking`` (the wait for the lock), ``report`` (what happened) and
``scheduler`` (the heavy lane under pytest-xdist).

A heavy test holds the lock from the start of its setup to the end of its
teardown.  Settings: command line > environment > ini > default.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from heavylock.locking import LockClient
from heavylock.report import Recorder
from heavylock.scheduler import Lane
from heavylock.scheduler import addoptions as add_lane_options
from heavylock.selection import Selector
from heavylock.settings import DEFAULT_MARKERS, Settings, addoptions

STATE_KEY = pytest.StashKey["_State"]()


def pytest_addoption(parser):
    addoptions(parser)
    add_lane_options(parser)


class _State:
    """Everything of one pytest process, registered as a plugin so that its
    hooks see it."""

    def __init__(self, config):
        self.config = config
        self.settings = Settings(config)
        self.selector = Selector(self.settings)
        self.client = LockClient(config, self.settings)
        self.recorder = Recorder(self.settings)
        self.current = None       # event of the test holding the lock
        self.running = None       # event of the test in progress

    def pytest_runtest_logfinish(self, nodeid, location):
        """After the test's teardown and its report: release the lock.  (A
        plain hook, not a teardown wrapper: it runs even when a fixture's
        finalizer raised, and costs less per test.)"""
        event, self.running = self.running, None
        now = time.time()  # taken before the release, so that no next holder precedes it
        if self.current is not None:
            self.client.release()
            self.current["released"] = now
            self.current = None
        if event is not None:
            event["end"] = now


def _state(config) -> _State:
    return config.stash[STATE_KEY]


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
    # The heavy lane: xdist's scheduler for --dist load, and the verdicts'
    # way from the workers to it.
    config.pluginmanager.register(Lane(config, state.selector, state.recorder), "heavylock-lane")
    if config.getoption("heavylock_timeline") and not hasattr(config, "workerinput"):
        state.recorder.start_sampling()


def pytest_collection_modifyitems(session, config, items):
    selector = _state(config).selector
    for item in items:
        selector.verdict(item)


def pytest_report_collectionfinish(config, start_path, items):
    if not (config.getoption("heavylock_explain") or config.getoption("collectonly")):
        return None
    state = _state(config)
    verdict = state.selector.verdict
    heavy = [it for it in items if verdict(it)[0]]
    lines = [f"heavylock: {len(heavy)} of {len(items)} tests take the lock "
             f"{state.settings.where()}"]
    if config.getoption("heavylock_explain"):
        for it in items:
            is_heavy, rule = verdict(it)
            lines.append(f"  {'HEAVY' if is_heavy else 'light'}  {it.nodeid}  ({rule})")
    elif heavy:
        lines.append("  (--heavylock-explain shows which tests and why)")
    return lines


def _skip_reason_for_model(settings):
    if not settings.run_heavy:
        return ("heavy test skipped: opt in with RUN_HEAVY_INTEGRATION=1 (or --run-heavy) "
                "and LOCAL_MODEL_PATH=/path/to/model.gguf")
    if not os.environ.get("LOCAL_MODEL_PATH"):
        return ("heavy test skipped: export LOCAL_MODEL_PATH=/path/to/model.gguf "
                "(the model file this test loads)")
    return None


def pytest_runtest_setup(item):
    """Runs after the skip/xfail marks are evaluated and before any fixture is
    set up: take the lock here so model loads in fixtures are covered."""
    state = _state(item.config)
    heavy, rule = state.selector.verdict(item)
    event = state.running = state.recorder.new_event(item.nodeid, heavy, rule)
    if not heavy:
        return
    if "local_model_path" in item.fixturenames:
        reason = _skip_reason_for_model(state.settings)
        if reason:
            pytest.skip(reason)  # no need to wait for the lock just to skip
    worker = state.settings.worker
    label = f"{item.nodeid} [{worker}]" if worker else item.nodeid
    event["wait_start"], event["acquired"] = state.client.acquire(label)
    state.current = event


def pytest_sessionfinish(session):
    state = session.config.stash.get(STATE_KEY, None)
    if state is None:
        return
    state.client.close()
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:  # an xdist worker: hand our events to the controller
        state.recorder.to_workeroutput(workeroutput)
        return
    state.recorder.stop_sampling()
    state.recorder.write_files(session.config)


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error):
    """xdist controller: collect a worker's events."""
    _state(node.config).recorder.from_workeroutput(getattr(node, "workeroutput", None))


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    state = config.stash.get(STATE_KEY, None)
    if state is None or getattr(config, "workeroutput", None) is not None:
        return
    state.recorder.summary(terminalreporter, config)


# ---------------------------------------------------------------- fixtures

@pytest.fixture
def local_model_path(request):
    """The validated model file from ``LOCAL_MODEL_PATH``, as a ``Path``.
    Skips (saying what to export) without the opt-in or without the
    variable; errors when the opt-in is given but the path is bad.  A test
    that uses it is heavy."""
    reason = _skip_reason_for_model(_state(request.config).settings)
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
        self._event = None

    def __enter__(self):
        state = self._state
        if state.client.held:
            return self
        event = state.recorder.new_event(self._item.nodeid + " (llm_lock)", True,
                                         "llm_lock fixture")
        event["wait_start"], event["acquired"] = state.client.acquire(event["nodeid"])
        self._event = event
        return self

    def __exit__(self, *exc):
        if self._event is not None:
            event, self._event = self._event, None
            event["released"] = event["end"] = time.time()  # before others may win
            self._state.client.release()
        return False


@pytest.fixture
def llm_lock(request):
    """A context manager that holds the heavylock lock for a block."""
    lk = _ExplicitLock(_state(request.config), request.node)
    yield lk
    lk.__exit__(None, None, None)
