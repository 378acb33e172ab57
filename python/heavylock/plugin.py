"""pytest-heavylock: heavy (local-LLM) tests one at a time, across processes
and xdist workers, under the file lock ``models/.llm_load.lock``.

This module is the wiring: options, hooks and fixtures.  The work lives in
``settings`` (what the user asked for), ``selection`` (which tests are
heavy), ``locking`` (the wait for the lock), ``report`` (what happened) and
``scheduler`` (the heavy lane under pytest-xdist).

A heavy test holds the lock from the start of its setup to the end of its
teardown; a heavy test module or conftest.py holds it while it is imported
(heavy work at import time is part of its tests), until a run has measured
that importing it loads no model (``imports``).  Settings: command line >
environment > ini > default.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

import pytest

from heavylock.imports import ImportVerdicts, Probe, content_hash, model_dirs
from heavylock import deaths
from heavylock.locking import LockClient, note_timer
from heavylock.report import Recorder, rss
from heavylock.scheduler import Lane
from heavylock.scheduler import addoptions as add_lane_options
from heavylock.selection import Selector
from heavylock.settings import DEFAULT_MARKERS, Settings, addoptions
from heavylock.weights import PeakMeter, Weights
from heavylock.weights import describe as describe_weight

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
        self.reporting = bool(self.settings.report or self.settings.timeline)
        # xdist workers spool their events where the controller can read them
        # if they die (made by the controller for its first worker).
        self.spool = getattr(config, "workerinput", {}).get("heavylock_spool")
        self.recorder = Recorder(self.settings, self.spool)
        self.weights = Weights(config, self.settings)
        self.imports = ImportVerdicts(config)
        self.model_dirs = model_dirs(self.settings)
        self.peak = PeakMeter()
        self.current = None       # event of the test holding the lock
        self.running = None       # event of the test in progress
        self.watches = {}         # xdist controller: worker -> deaths.Watch

    def pytest_runtest_logfinish(self, nodeid, location):
        """After the test's teardown and its report: release the lock.  (A
        plain hook, not a teardown wrapper: it runs even when a fixture's
        finalizer raised, and costs less per test.)"""
        if self.running is None and self.current is None:
            return  # a light test without a report: nothing was recorded
        event, self.running = self.running, None
        now = time.time()  # taken before the release, so that no next holder precedes it
        if self.current is not None:
            peak = self.peak.stop()
            if peak is not None:
                self.current["peak"] = peak
            lost = self.client.release()
            if lost:
                self.current["lost"] = lost
            self.current["released"] = now
            after = rss()
            if after is not None and self.current.get("rss_before") is not None:
                self.current["rss_after"] = after
                self.current["resident"] = after - self.current["rss_before"]
            self.current = None
        if event is not None:
            event["end"] = now
            self.recorder.touch(event)

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_call(self, item):
        """A heavy test whose lock was lost while it ran (the server ended the
        session) fails at the end of its call: it ran unprotected."""
        outcome = yield
        lost = self.client.lost if self.current is not None else None
        if lost and outcome.excinfo is None:
            exc = pytest.fail.Exception(f"heavylock: lost the lock: {lost} (the test ran on "
                                        "without the lock's protection)", pytrace=False)
            outcome.force_exception(exc)

    def pytest_runtest_logreport(self, report):
        """Each test's outcome, for the report (kept by the process that
        writes it: the xdist controller sees every worker's reports)."""
        if self.reporting and not self.settings.worker:
            self.recorder.logreport(report)

    @pytest.hookimpl(optionalhook=True)
    def pytest_handlecrashitem(self, crashitem, report, sched):
        """xdist controller: a worker died while running `crashitem`; keep the
        test in the report and the timeline.  (Returns None: the report is
        xdist's to shape.)"""
        node = getattr(report, "node", None)
        worker = node.gateway.id if node is not None else ""
        if self.spool and worker:
            self.recorder.from_spool(self.spool, worker)  # its events first, with the lock times
        self.recorder.crashed(crashitem, worker)


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
            "file lock, one at a time across processes and xdist workers; mem=\"2G\": its "
            "peak memory, ctx=256: the context it runs the model with (for the estimate)")
    state = config.stash[STATE_KEY] = _State(config)
    config.pluginmanager.register(state, "heavylock-state")
    # The heavy lane: xdist's scheduler for --dist load, and the verdicts'
    # way from the workers to it.
    lane = Lane(config, state.selector, state.recorder)
    if config.getoption("heavylock_explain"):
        lane.explain = lambda items: explain_lines(config, items)
    config.pluginmanager.register(lane, "heavylock-lane")
    if state.settings.timeline and not hasattr(config, "workerinput"):
        state.recorder.start_sampling()


def _imported_by(collector):
    """The file that making this collector's report imports, when it may be
    heavy: a test module, or a directory's conftest.py not loaded yet."""
    # (pytest < 8: a Package is a Module whose collect() imports only __init__.py)
    if isinstance(collector, pytest.Module) and not isinstance(collector, pytest.Package):
        return collector.path
    if isinstance(collector, getattr(pytest, "Directory", ())):  # pytest >= 8
        conftest = collector.path / "conftest.py"
        if (conftest.is_file()
                and not collector.config.pluginmanager.has_plugin(str(conftest))):
            return conftest
    return None


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    """Import a heavy test module, or a heavy folder's conftest.py, under the
    lock, and measure the import (imports.py)."""
    state = _state(collector.config)
    path = None if state.client.held else _imported_by(collector)
    if path is None:
        yield
        return
    root = collector.config.rootpath
    heavy, rule = state.selector.module_verdict(path, root)
    if not heavy:
        yield
        return
    rel = collector.nodeid if isinstance(collector, pytest.Module) else \
        os.path.relpath(path, root).replace(os.sep, "/")
    sha = content_hash(path)
    if not rule.startswith("token ") and state.imports.light(rel, sha):
        yield  # an earlier run imported this content and saw no model load
        return
    event = state.recorder.new_event(rel, True, rule, kind="import", sha256=sha)
    worker = state.settings.worker
    try:
        event["wait_start"], event["acquired"] = state.client.acquire(
            f"import {rel}" + (f" [{worker}]" if worker else ""))
    except pytest.fail.Exception as exc:
        event["end"] = time.time()
        event["no_lock"] = state.client.why_not
        if path.name == "conftest.py":  # loaded before collect() is called: stop the run
            pytest.exit(f"{exc} (to import {rel}, which is never imported without the lock)",
                        returncode=pytest.ExitCode.INTERRUPTED)

        # The import must not run without the lock: this module's collection
        # fails with the reason instead (raising here would be an internal error).
        def refuse(msg=str(exc)):
            pytest.fail(msg, pytrace=False)

        collector.collect = refuse
        yield
        return
    state.recorder.touch(event)  # should this worker die while importing it
    probe = Probe(state.model_dirs, state.settings.path)
    probe.before()
    before, t0 = rss(), time.monotonic()
    try:
        yield
    finally:
        event["seconds"] = time.monotonic() - t0
        after = rss()
        if before is not None and after is not None:
            event["rss_growth"] = after - before
        event["model"] = probe.after()
        event["probed"], event["read_bytes"] = probe.seen, probe.read
        event["released"] = event["end"] = time.time()  # before others may win
        lost = state.client.release()
        if lost:
            event["lost"] = lost
        state.recorder.touch(event)


def pytest_collection_modifyitems(session, config, items):
    selector = _state(config).selector
    for item in items:
        selector.verdict(item)
    lane = config.pluginmanager.getplugin("heavylock-lane")
    if lane is not None:  # the weights the lane sizes itself by (auto)
        state = _state(config)
        lane.weights = {it.nodeid: state.weights.of(it)[0] for it in items
                        if selector.verdict(it)[0]}


def pytest_report_collectionfinish(config, start_path, items):
    if not (config.getoption("heavylock_explain") or config.getoption("collectonly")):
        return None
    return explain_lines(config, items)


def explain_lines(config, items):
    """The verdicts' lines (--heavylock-explain, or the count with
    --collect-only).  Under xdist a worker computes them and the controller
    prints them (scheduler.Lane)."""
    state = _state(config)
    verdict = state.selector.verdict
    heavy = [it for it in items if verdict(it)[0]]
    lines = [f"heavylock: {len(heavy)} of {len(items)} tests take the lock "
             f"{state.settings.where()}"]
    if config.getoption("heavylock_explain"):
        for it in items:
            is_heavy, rule = verdict(it)
            weight = ""
            if is_heavy:
                n, source, problem = state.weights.of(it)
                weight = f", {problem}" if problem else f", {describe_weight(n, source)}"
            lines.append(f"  {'HEAVY' if is_heavy else 'light'}  {it.nodeid}  ({rule}{weight})")
    elif heavy:
        lines.append("  (--heavylock-explain shows which tests and why)")
    return lines


def pytest_report_header(config):
    settings = _state(config).settings
    if settings.model_problem and settings.run_heavy:
        return [f"heavylock: {settings.model_problem}; the lock is {settings.shown_path}; tests "
                "that request local_model_path fail until the model is there"]
    return None


def _skip_reason_for_model(settings):
    if not settings.run_heavy:
        return ("heavy test skipped: opt in with RUN_HEAVY_INTEGRATION=1 (or "
                "--heavylock-run-heavy) "
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
    if not heavy and not state.reporting:
        return  # a light test costs its verdict only: no event, no clock, no /proc
    event = state.running = state.recorder.new_event(item.nodeid, heavy, rule)
    if not heavy:
        return
    if "local_model_path" in item.fixturenames:
        reason = _skip_reason_for_model(state.settings)
        if reason:
            event["no_lock"] = "skipped"
            pytest.skip(reason)  # no need to wait for the lock just to skip
    weight, source, problem = state.weights.of(item)
    if problem:
        event["no_lock"] = "error"
        pytest.fail(f"heavylock: {problem}", pytrace=False)
    event["weight"], event["weight_source"] = weight, source
    worker = state.settings.worker
    label = f"{item.nodeid} [{worker}]" if worker else item.nodeid
    event["rss_before"] = rss()
    try:
        event["wait_start"], event["acquired"] = state.client.acquire(label, item, weight,
                                                                      source)
    except pytest.fail.Exception:
        event["no_lock"] = state.client.why_not  # for the summary: timed out or error
        raise
    state.peak.start(rss())
    state.current = event
    state.recorder.touch(event)


def pytest_sessionfinish(session):
    state = session.config.stash.get(STATE_KEY, None)
    if state is None:
        return
    state.client.close()
    state.recorder.close()
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:  # an xdist worker: hand our events to the controller
        state.recorder.to_workeroutput(workeroutput)
        return
    state.recorder.stop_sampling()
    state.weights.save(state.recorder.events + state.recorder.remote_events)
    state.imports.save(state.recorder.events + state.recorder.remote_events)
    state.recorder.write_files(session.config)
    if state.recorder.errors and session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED  # asked for, not written: not a pass
    if state.spool:
        shutil.rmtree(state.spool, ignore_errors=True)


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node):
    """xdist controller: tell a new worker where to spool its events, and
    note the OOM-kill counters covering it (evidence, should it die)."""
    state = _state(node.config)
    p = deaths.process_of(node)
    state.watches[node.gateway.id] = deaths.Watch(p.pid if p is not None else None)
    if state.reporting:
        if state.spool is None:
            state.spool = tempfile.mkdtemp(prefix="heavylock-spool-")
        node.workerinput["heavylock_spool"] = state.spool


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error):
    """xdist controller: collect a worker's events; a worker that died
    handed none over, so take them from its spool, and find out why it died
    (xdist's `error` says only "Not properly terminated": the evidence is
    its exit status and the kernel's OOM-kill counters)."""
    state = _state(node.config)
    if error is not None:
        watch = state.watches.get(node.gateway.id) or deaths.Watch(None)
        state.recorder.died(node.gateway.id, *watch.cause(deaths.exit_status(node)))
    if not state.recorder.from_workeroutput(getattr(node, "workeroutput", None)) and state.spool:
        state.recorder.from_spool(state.spool, node.gateway.id)


@pytest.hookimpl(optionalhook=True, tryfirst=True)
def pytest_timeout_set_timer(item, settings):
    """pytest-timeout arms a test's timer: remember it, so that a lock wait
    can stop it (locking.timer_stopped).  Returns None: the timer is
    pytest-timeout's to set."""
    note_timer(item, settings)


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
                                         "llm_lock fixture", kind="block")
        event["wait_start"], event["acquired"] = state.client.acquire(event["nodeid"],
                                                                      self._item)
        state.recorder.touch(event)
        self._event = event
        return self

    def __exit__(self, *exc):
        if self._event is not None:
            event, self._event = self._event, None
            event["released"] = event["end"] = time.time()  # before others may win
            lost = self._state.client.release()
            if lost:
                event["lost"] = lost
            self._state.recorder.touch(event)
        return False


@pytest.fixture
def llm_lock(request):
    """A context manager that holds the heavylock lock for a block."""
    lk = _ExplicitLock(_state(request.config), request.node)
    yield lk
    lk.__exit__(None, None, None)
