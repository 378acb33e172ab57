"""The heavy lane: heavylock as pytest-xdist's scheduler for ``--dist load``.

With the lock alone, a worker that draws a heavy test blocks on the lock
while light tests wait in its queue, and every worker that ever ran a heavy
test keeps its own copy of a session-scoped model.  Here the controller
sends heavy tests to one worker per slot, the *lane*, longest first (by the
call durations earlier runs left in pytest's cache; unknown ones first, in
collection order), and light tests to every other worker.  A lane takes light
work only when no heavy test is queued; other workers never take heavy work.
The lock stays on: the lane still takes it for each heavy test, so other
runs and tools on the machine keep excluding the lane.

The controller sees only node ids, so each worker writes its verdicts
(which tests are heavy, and why) to a file in a directory the controller
created and passed down in ``workerinput``, before xdist sends its
``collectionfinish``.  Node ids are never rewritten (``--dist loadgroup``
rewrites them, which pytest 9.2 no longer tolerates: pytest-xdist #1386).

An xdist worker runs a test only once it knows the next one (or is told to
shut down): that is how it decides which fixtures to tear down.  So a lane is
kept two tests deep, and a worker that will never get more work is shut down
at once rather than left holding its last test.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile

import pytest

from heavylock.deaths import UNKNOWN
from heavylock.settings import parse_yes_no, setting, size_format

WORKERINPUT_KEY = "heavylock_verdicts"
CACHE_KEY = "heavylock/durations"
USER_DISTS = ("loadscope", "loadfile", "loadgroup", "worksteal", "each")

LANE_HELP = ("run heavy tests in a lane of their own under pytest-xdist's default "
             "--dist load: on (default) or off")


def addoptions(parser):
    group = parser.getgroup("heavylock")
    group.addoption("--heavylock-lane", default=None, metavar="on|off", help=LANE_HELP)
    parser.addini("heavylock_lane", LANE_HELP, default="")


def parse_lane(config):
    """(on, where it came from)."""
    v, where = setting(config, "heavylock_lane", "HEAVYLOCK_LANE", "heavylock_lane")
    if v is None:
        return True, "default"
    return parse_yes_no(v, where), where


def auto_lanes(weights, budget, workers):
    """How many lanes --heavylock-slots auto gets: as many of the heaviest
    known weights as fit in the budget together (a static budget, else the
    memory available now), at least 1, and at most workers - 1 so that one
    worker keeps the light tests.  An unknown weight (0) runs alone, so
    with none known there is one lane.  The lock still admits by memory at
    each test; the lanes only decide how many workers may ask at once."""
    if not budget:
        from heavylock import backends

        mem = getattr(backends._native, "mem_available", None)
        budget = (mem() if mem is not None else None) or 0
    lanes, used = 0, 0
    for w in sorted((w for w in weights if w > 0), reverse=True):
        if used + w > budget:
            break
        used += w
        lanes += 1
    return max(1, min(lanes, workers - 1 if workers > 1 else 1))


def _expected_nodes(config):
    """How many workers xdist starts (the helper was renamed in xdist 3.6)."""
    try:
        from xdist.workermanage import parse_tx_spec_config as parse
    except ImportError:
        from xdist.workermanage import parse_spec_config as parse
    return len(parse(config))


def _wid(node):
    return node.gateway.id


# ---------------------------------------------------------------- the side channel

class Verdicts:
    """The directory through which workers tell the controller which tests
    are heavy: one ``<workerid>.json`` per worker, written atomically."""

    def __init__(self):
        self.directory = None
        self.weights = {}   # nodeid -> bytes, as the workers judged them

    def for_node(self, node):
        """Controller: called for each worker before it starts."""
        if self.directory is None:
            self.directory = tempfile.mkdtemp(prefix="heavylock-verdicts-")
        node.workerinput[WORKERINPUT_KEY] = self.directory

    @staticmethod
    def write(config, heavy, count, weights=None, explain=None):
        """Worker: heavy is {nodeid: rule}, weights {nodeid: bytes} (what
        --heavylock-slots auto sizes the lanes by), explain the lines of
        --heavylock-explain.  A worker on another host cannot reach the
        directory; the controller then runs without a lane (nor explains)."""
        directory = config.workerinput.get(WORKERINPUT_KEY)
        if not directory:
            return
        wid = config.workerinput.get("workerid", "gw")
        path = os.path.join(directory, f"{wid}.json")
        try:
            with open(path + ".part", "w", encoding="utf-8") as f:
                json.dump({"worker": wid, "count": count, "heavy": heavy,
                           "weights": weights or {}, "explain": explain or []}, f)
            os.replace(path + ".part", path)
        except OSError:
            pass

    def read(self, worker_ids=None, collection=None):
        """({nodeid: rule} or None, why not), from the named workers' files
        (any worker's when None) that cover the whole collection."""
        if self.directory is None:
            return None, "no verdict directory was set up"
        if worker_ids is None:
            worker_ids = sorted(n[:-5] for n in os.listdir(self.directory) if n.endswith(".json"))
        for wid in worker_ids:
            try:
                with open(os.path.join(self.directory, f"{wid}.json"), encoding="utf-8") as f:
                    data = json.load(f)
            except (OSError, ValueError):
                continue
            if collection is not None and data.get("count") != len(collection):
                continue
            self.weights = dict(data.get("weights") or {})
            return dict(data.get("heavy") or {}), None
        return None, (f"no worker's verdicts reached the controller through {self.directory} "
                      "(workers on other hosts?)")

    def explain(self, wid):
        """The --heavylock-explain lines worker `wid` wrote, or None."""
        if self.directory is None:
            return None
        try:
            with open(os.path.join(self.directory, f"{wid}.json"), encoding="utf-8") as f:
                return list(json.load(f).get("explain") or []) or None
        except (OSError, ValueError):
            return None

    def remove(self):
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)
            self.directory = None


# ---------------------------------------------------------------- the scheduler

class LaneScheduling:
    """xdist's Scheduling protocol (``xdist/scheduler/protocol.py``): heavy
    tests in lanes, light tests everywhere else."""

    def __init__(self, config, log, lane):
        self.config = config
        self.lane = lane
        self.log = getattr(log, "lanesched", None) or (lambda *a: None)
        self.numnodes = _expected_nodes(config)
        self.slots = lane.slots
        self.maxschedchunk = getattr(config.option, "maxschedchunk", None)
        self.node2collection = {}
        self.node2pending = {}
        self.collection = None
        self.heavy = {}            # index -> rule
        self.heavy_queue = []      # indices, in dispatch order
        self.light_queue = []
        self.lanes = []            # nodes that take heavy work now
        self.lane_ids = []         # every worker that ever was a lane, in order
        self.crashed = []          # {"nodeid", "worker", "heavy", "rerun"}
        self.why_no_verdicts = None

    # -- the protocol's properties

    @property
    def nodes(self):
        return list(self.node2pending)

    @property
    def collection_is_completed(self):
        return len(self.node2collection) >= self.numnodes

    @property
    def tests_finished(self):
        if not self.collection_is_completed:
            return False
        if self.heavy_queue or self.light_queue:
            return False
        return all(len(p) < 2 for p in self.node2pending.values())

    @property
    def has_pending(self):
        return bool(self.heavy_queue or self.light_queue
                    or any(self.node2pending.values()))

    # -- nodes come and go

    def add_node(self, node):
        assert node not in self.node2pending
        self.node2pending[node] = []

    def add_node_collection(self, node, collection):
        assert node in self.node2pending
        if self.collection is not None and list(collection) != self.collection:
            from xdist.report import report_collection_diff

            first = next(iter(self.node2collection))
            self.log(report_collection_diff(self.collection, collection,
                                            _wid(first), _wid(node)))
            node.shutdown()  # its indices would name other tests
            return
        self.node2collection[node] = list(collection)

    def remove_node(self, node):
        """A worker left: after shutdown with nothing pending, or crashed.
        A crash requeues what it had not started (at the front, so that a
        heavy test keeps its place), moves the lane to a live worker, and
        returns the test that was running (xdist reports it as failed)."""
        pending = self.node2pending.pop(node)
        if node in self.lanes:
            self.lanes.remove(node)
        if not pending:
            return None
        crashed = self.collection[pending[0]]
        self.crashed.append({"nodeid": crashed, "worker": _wid(node),
                             "heavy": pending[0] in self.heavy, "rerun": False})
        rest = pending[1:]
        self.heavy_queue[:0] = [i for i in rest if i in self.heavy]
        self.light_queue[:0] = [i for i in rest if i not in self.heavy]
        self._dispatch_all()
        return crashed

    # -- the run

    def schedule(self):
        assert self.collection_is_completed
        if self.collection is not None:  # a replacement worker joined
            self._dispatch_all()
            return
        if not self._same_collections():
            self.log("**Different tests collected, aborting run**")
            return
        self.collection = next(iter(self.node2collection.values()))
        worker_ids = [_wid(n) for n in self.node2collection]
        verdicts, self.why_no_verdicts = self.lane.verdicts.read(worker_ids, self.collection)
        verdicts = verdicts or {}
        self.heavy = {i: verdicts[nid] for i, nid in enumerate(self.collection)
                      if nid in verdicts}
        self.heavy_queue = self._longest_first(sorted(self.heavy))
        if self.lane.slots == 0:  # auto: as many lanes as the known weights fit
            s = self.lane.settings
            known = [self.lane.verdicts.weights.get(self.collection[i], 0) for i in self.heavy]
            self.slots = auto_lanes(known, s.budget, self.numnodes)
            self.log("auto lanes:", self.slots)
        self.light_queue = [i for i in range(len(self.collection)) if i not in self.heavy]
        self._assign_lanes()
        self._first_light_chunks()  # lanes take none while heavy work is queued
        self._dispatch_all()        # which sends the lanes their first heavy tests

    def mark_test_complete(self, node, item_index, duration=0):
        self.node2pending[node].remove(item_index)
        self._dispatch(node, duration)
        self._shutdown_idle()

    def mark_test_pending(self, item):
        """A plugin's pytest_handlecrashitem asks for a crashed test again
        (pytest-rerunfailures does)."""
        for c in self.crashed:
            c["rerun"] = c["rerun"] or c["nodeid"] == item
        i = self.collection.index(item)
        (self.heavy_queue if i in self.heavy else self.light_queue).insert(0, i)
        self._dispatch_all()

    def remove_pending_tests_from_node(self, node, indices):
        raise NotImplementedError()  # only work stealing asks for tests back

    # -- helpers

    def _same_collections(self):
        from xdist.report import report_collection_diff

        items = list(self.node2collection.items())
        first, col = items[0]
        same = True
        for node, other in items[1:]:
            msg = report_collection_diff(col, other, _wid(first), _wid(node))
            if msg:
                same = False
                self.log(msg)
                self.config.hook.pytest_collectreport(report=pytest.CollectReport(
                    nodeid=_wid(node), outcome="failed", longrepr=msg, result=[]))
        return same

    def _longest_first(self, indices):
        """Unknown durations first, in collection order, then known ones
        longest first (sorted is stable, so equal ones keep their order)."""
        known = self.lane.past_durations()
        unknown = [i for i in indices if self.collection[i] not in known]
        timed = sorted((i for i in indices if self.collection[i] in known),
                       key=lambda i: -known[self.collection[i]])
        return unknown + timed

    def _live(self, node):
        return node in self.node2collection and not node.shutting_down

    def _assign_lanes(self):
        """Keep one lane per slot while heavy work is queued: the first
        workers at the start, then (after a crash) the live worker with the
        least work, else the replacement xdist starts."""
        if not self.heavy_queue:
            return
        while len(self.lanes) < self.slots:
            spare = [n for n in self.node2pending if self._live(n) and n not in self.lanes]
            if not spare:
                return
            node = min(spare, key=lambda n: (len(self.node2pending[n]), len(_wid(n)), _wid(n)))
            self.lanes.append(node)
            if _wid(node) not in self.lane_ids:
                self.lane_ids.append(_wid(node))
            self.log("lane:", _wid(node))

    def _take_heavy(self, n):
        out, self.heavy_queue = self.heavy_queue[:n], self.heavy_queue[n:]
        return out

    def _take_light(self, n):
        out, self.light_queue = self.light_queue[:n], self.light_queue[n:]
        return out

    def _send(self, node, indices):
        if indices:
            self.node2pending[node].extend(indices)
            node.send_runtest_some(indices)

    def _takes_light(self, node):
        return node not in self.lanes or not self.heavy_queue

    def _light_takers(self):
        return [n for n in self.node2pending if self._live(n) and self._takes_light(n)]

    def _first_light_chunks(self):
        """Consecutive chunks (pytest orders tests to share fixtures), a
        quarter of each worker's share to begin with; one each when there
        are fewer than two per worker."""
        takers = self._light_takers()
        if not takers or not self.light_queue:
            return
        if len(self.light_queue) < 2 * len(takers):
            k = 0
            while self.light_queue:
                self._send(takers[k % len(takers)], self._take_light(1))
                k += 1
            return
        chunk = max(2, len(self.light_queue) // len(takers) // 4)
        if self.maxschedchunk:
            chunk = max(2, min(chunk, self.maxschedchunk))
        for node in takers:
            self._send(node, self._take_light(chunk))

    def _dispatch(self, node, duration=0.0):
        if not self._live(node):
            return
        pending = self.node2pending[node]
        if node in self.lanes and self.heavy_queue:
            # two deep: the next heavy test is known when one starts (a worker
            # promoted after a crash may still hold more light tests)
            self._send(node, self._take_heavy(max(0, 2 - len(pending))))
            return
        if not self.light_queue:
            return
        n = len(self._light_takers()) or 1
        low = max(2, len(self.light_queue) // n // 4)
        high = max(2, len(self.light_queue) // n // 2)
        if len(pending) >= low:
            return
        if duration >= 0.1 and len(pending) >= 2:
            return  # long tests and enough queued: hold the rest for faster workers
        num = high - len(pending)
        if self.maxschedchunk:
            num = min(num, max(2 - len(pending), self.maxschedchunk))
        self._send(node, self._take_light(num))

    def _dispatch_all(self):
        """After anything that changes who is alive or what is queued (a
        crash, a replacement worker, a test put back by a rerun plugin)."""
        if self.collection is None:
            return
        self._assign_lanes()
        for node in list(self.node2pending):
            self._dispatch(node)
        self._shutdown_idle()

    def _shutdown_idle(self):
        """Shut down every worker that will get no more work, so that it runs
        the test it holds (a worker waits for the next test before it runs
        one).  A lane's crash can requeue work later: a live worker then
        becomes the lane, or else the replacement xdist starts."""
        if self.collection is None:
            return
        for node in list(self.node2pending):
            if not self._live(node):
                continue
            if self.light_queue:
                continue
            if node in self.lanes and self.heavy_queue:
                continue
            node.shutdown()


# ---------------------------------------------------------------- the plugin

class Lane:
    """Registered in every process; each hook acts where it belongs (worker,
    controller, or a run without xdist)."""

    def __init__(self, config, selector, recorder):
        self.config = config
        self.selector = selector
        self.recorder = recorder
        self.on, self.on_where = parse_lane(config)
        self.settings = selector.settings
        self.slots = self.settings.slots  # lanes: one per slot; 0 = auto (auto_lanes)
        self.weights = {}       # nodeid -> bytes (this process's collection)
        self.verdicts = Verdicts()
        self.sched = None
        self.heavy = {}         # nodeid -> rule (this process's collection, or the controller's)
        self.reports = {}       # heavy nodeid -> {"worker": id, "call": s, "total": s}
        self.light_workers = set()  # workers that ran light tests (controller)
        self._heavy_ids = None  # nodeids known heavy while the run goes on (controller)
        self.explain = None     # items -> --heavylock-explain's lines, when asked for
        self._explained = False
        self._past = None

    # -- worker (and a run without xdist): the verdicts

    @pytest.hookimpl(tryfirst=True)  # before xdist sends its collectionfinish
    def pytest_collection_finish(self, session):
        verdict = self.selector.verdict
        self.heavy = {}
        for item in session.items:
            heavy, rule = verdict(item)
            if heavy:
                self.heavy[item.nodeid] = rule
        if hasattr(self.config, "workerinput"):
            Verdicts.write(self.config, self.heavy, len(session.items),
                           {k: v for k, v in self.weights.items() if k in self.heavy},
                           self.explain(session.items) if self.explain else None)
        elif self.config.pluginmanager.getplugin("dsession") is None:
            self._heavy_ids = set(self.heavy)  # a run without xdist: this is the collection

    # -- controller

    @pytest.hookimpl(optionalhook=True)
    def pytest_configure_node(self, node):
        self.verdicts.for_node(node)

    @pytest.hookimpl(optionalhook=True)
    def pytest_xdist_node_collection_finished(self, node, ids):
        """--heavylock-explain under xdist: the controller collects nothing, so
        it prints the lines of the first worker that collected (once)."""
        if self.explain is None or self._explained:
            return
        lines = self.verdicts.explain(_wid(node))
        tr = self.config.pluginmanager.getplugin("terminalreporter")
        if lines and tr is not None:
            self._explained = True
            for line in lines:
                tr.write_line(line)

    @pytest.hookimpl(optionalhook=True)
    def pytest_xdist_make_scheduler(self, config, log):
        if not self.on or config.getoption("dist") != "load":
            return None
        self.sched = LaneScheduling(config, log, self)
        return self.sched

    def past_durations(self):
        if self._past is None:
            cache = getattr(self.config, "cache", None)
            data = cache.get(CACHE_KEY, {}) if cache is not None else {}
            self._past = {k: float(v) for k, v in data.items()
                          if isinstance(v, (int, float))} if isinstance(data, dict) else {}
        return self._past

    def _heavy_now(self):
        """The heavy nodeids, when known before the session ends (this
        process's collection, or the lane scheduler's); None when not."""
        if self._heavy_ids is None:
            sched = self.sched
            if sched is not None and sched.collection:
                self._heavy_ids = {sched.collection[i] for i in sched.heavy}
        return self._heavy_ids

    def pytest_runtest_logreport(self, report):
        if hasattr(self.config, "workerinput"):
            return
        heavy = self._heavy_now()
        if heavy is not None and report.nodeid not in heavy:
            # A light test: only which worker ran it is kept (the notes name
            # them), not a record per test (the controller's memory).
            node = getattr(report, "node", None)
            if node is not None:
                self.light_workers.add(_wid(node))
            return
        r = self.reports.setdefault(report.nodeid, {"worker": None, "call": None, "total": 0.0,
                                                    "skipped": False})
        node = getattr(report, "node", None)
        if node is not None:
            r["worker"] = _wid(node)
        r["total"] += report.duration or 0.0
        if report.when == "call":
            r["call"] = report.duration
        # skipped by its own verdict, not a test without a call phase (a crash)
        r["skipped"] = r["skipped"] or bool(report.skipped)

    @pytest.hookimpl(tryfirst=True)  # before the plugin writes the report and timeline
    def pytest_sessionfinish(self, session):
        if hasattr(self.config, "workerinput"):
            return
        if self.sched is not None:
            coll = self.sched.collection or []
            self.heavy = {coll[i]: rule for i, rule in self.sched.heavy.items()}
        elif self.verdicts.directory is not None:  # xdist scheduled: still learn what was heavy
            self.heavy = self.verdicts.read()[0] or {}
        self._save_durations()
        self._mark_events()
        self.recorder.notes.extend(self._notes())

    def pytest_unconfigure(self, config):
        self.verdicts.remove()

    # -- what the run leaves behind

    def _save_durations(self):
        cache = getattr(self.config, "cache", None)
        if cache is None:
            return
        new = {nid: r["call"] for nid, r in self.reports.items()
               if nid in self.heavy and r["call"] is not None}
        if new:
            merged = dict(self.past_durations())
            merged.update({k: round(v, 4) for k, v in new.items()})
            cache.set(CACHE_KEY, merged)

    def _mark_events(self):
        lanes = set(self.sched.lane_ids) if self.sched else set()
        for e in self.recorder.remote_events:
            e["lane"] = e.get("worker") in lanes
    def _notes(self):
        dsession = self.config.pluginmanager.getplugin("dsession")
        if dsession is None:
            return []
        ran_heavy = [r for nid, r in self.reports.items() if nid in self.heavy]
        waited = sum(e["acquired"] - e["wait_start"] for e in self.recorder.remote_events
                     if e.get("acquired") and e.get("wait_start"))
        dist = self.config.getoption("dist")
        sched = self.sched
        if sched is None:
            if not ran_heavy:
                return []
            why = (f"the lane is off ({self.on_where})" if not self.on
                   else f"--dist {dist}: heavylock left the scheduling to pytest-xdist")
            return [f"{why}; the lock alone serialized the heavy tests, and workers waited "
                    f"{waited:.2f} s for it in total. A heavy lane (the default --dist load) "
                    "would have been faster: heavy tests on one worker, light ones on the others, "
                    "no worker waiting."]
        if sched.why_no_verdicts:
            return [f"no heavy lane: {sched.why_no_verdicts}; the lock alone serialized "
                    "the heavy tests"]
        if not sched.heavy:
            return []
        lane_ids = sched.lane_ids
        heavy_time = sum(r["total"] for r in ran_heavy)
        light_workers = sorted({r["worker"] for nid, r in self.reports.items()
                                if nid not in self.heavy and r["worker"]} | self.light_workers,
                               key=lambda w: (len(w), w))
        lines = []
        n_all = len(sched.collection)
        skipped = sum(1 for r in ran_heavy if r["skipped"])
        skipped = f", {skipped} of them skipped" if skipped else ""
        order = ("longest first" if self.past_durations()
                 else "in collection order (no durations cached yet)")
        if len(sched.heavy) == n_all:
            idle = len(sched.node2collection) - len(lane_ids)
            lanes = "one lane" if len(lane_ids) == 1 else f"{len(lane_ids)} lanes"
            at_once = ("one at a time" if self.slots == 1 else "admitted by memory"
                       if self.slots == 0 else f"at most {self.slots} at once")
            # the opt-in when it applies, not the first test's rule (a marker)
            why = (self.settings.run_heavy_source if self.selector.every_test
                   else next(iter(sched.heavy.values())))
            lines.append(f"every test is heavy ({why}): {lanes}, "
                         f"{', '.join(lane_ids)}, ran all {n_all} tests {at_once} "
                         f"({heavy_time:.2f} s{skipped}); the other {max(idle, 0)} worker(s) "
                         "sat idle")
        else:
            lines.append(f"heavy lane: {', '.join(lane_ids)} ran {len(ran_heavy)} heavy tests "
                         f"({heavy_time:.2f} s{skipped}), {order}; light tests ran on "
                         f"{', '.join(light_workers) or 'no other worker'}")
        if self.slots == 0:
            s = self.settings
            budget = (f"the budget {size_format(s.budget)}" if s.budget
                      else "the memory available at the start")
            lines.append(f"--heavylock-slots auto ({s.slots_source}): {sched.slots} lane(s), as "
                         f"many of the heaviest known weights as fit in {budget} (at least 1, "
                         "at most one less than the workers, so that one keeps the light tests)")
        for c in sched.crashed:
            moved = c["heavy"] and lane_ids[-1] != c["worker"]
            cause = self.recorder.deaths.get(c["worker"], (UNKNOWN,))[0]
            lines.append(f"worker {c['worker']} crashed while running {c['nodeid']}: {cause} "
                         f"({'queued again' if c['rerun'] else 'reported as failed'})"
                         + (f"; the lane moved on to {lane_ids[-1]}" if moved else ""))
        return lines
