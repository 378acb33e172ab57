"""What happened in a run: one event per test (wait, hold, start, end,
outcome, memory before and after), one per heavy module import, the sampled
memory of the process tree, and what is made of them at the end: the
terminal summary, the JSON report and the timeline.

xdist workers hand their events to the controller at the end of their
session.  A worker that dies (a crash, SIGKILL, the OOM killer) hands
nothing over, so when a report or timeline is asked for, each worker also
appends every change of an event to a spool file, and the controller reads
it when the worker goes down.  Why it died (deaths.py) is kept on its
crashed events as "cause" and "cause_evidence": the summary, the report and
the timeline say the same."""

from __future__ import annotations

import json
import os
import threading
import time

from heavylock import backends
from heavylock.imports import light_import
from heavylock.deaths import UNKNOWN
from heavylock.settings import write_output

SCHEMA = 1
IMPORT_WARN_SECONDS = 1.0      # an import this slow is named after collection
IMPORT_WARN_BYTES = 32 * 2**20  # and so is one that grew the process this much
MiB = 2**20
PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def rss():
    """Resident memory of this process in bytes (mapped model files
    included), or None where /proc is not there.  Read per heavy test, so it
    must be cheap: /proc/self/statm is ~20 us, where walking the process tree
    (tree_rss, for the sampler) is milliseconds on a busy machine."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * PAGE
    except (OSError, ValueError, IndexError):
        return None


def outcome_of(report):
    """The test's outcome as this report tells it, or None when it tells
    nothing new (a passed setup or teardown)."""
    when = report.when
    if when not in ("setup", "call", "teardown"):
        return "crashed"  # xdist's report for a test whose worker died
    if hasattr(report, "wasxfail"):
        return "xfailed" if report.skipped else "xpassed"
    if report.failed:
        return "failed" if when == "call" else "error"
    if report.skipped:
        return "skipped"
    return "passed" if when == "call" else None


def describe_import(nodeid, imports):
    """One line on a measured import (one event per process that imported
    it): what was measured, and a model named only when one was seen."""
    workers = sorted((e["worker"] for e in imports if e.get("worker")), key=lambda w: (len(w), w))
    where = f" in {', '.join(workers)}" if workers else ""
    measured = (f"took {max(e['seconds'] for e in imports):.1f} s and added "
                f"{max(e.get('rss_growth') or 0 for e in imports) / MiB:.0f} MiB{where}")
    model = next((e["model"] for e in imports if e.get("model")), None)
    rule = imports[0].get("rule") or ""
    if model or rule.startswith("token "):
        what = f"loaded the model {model}" if model else f"runs code naming {rule.split()[1]}"
        return (f"importing {nodeid} {what} at import time ({measured}), under the lock, one "
                "process at a time; each process that imports it keeps what it loaded for the "
                "whole run, tests or not: a fixture that loads the model runs only where its "
                "tests do, under the lock")
    if all(light_import(e) for e in imports):
        return (f"importing {nodeid} {measured} and loaded no model (no .gguf or file of the "
                "model's folder mapped or open): from the next run on it is imported without "
                "the lock, until the file changes")
    read = max(e.get("read_bytes") or 0 for e in imports)
    why = (f"but it read {read / MiB:.0f} MiB, so it may have read one"
           if any(e.get("probed") for e in imports) else "but this system does not let an "
           "import be watched")
    return (f"importing {nodeid} {measured}; no model file was seen mapped or open, {why}: it "
            "stays under the lock")


class Recorder:
    def __init__(self, settings, spool_dir=None):
        self.settings = settings
        self.events = []          # this process's tests and imports
        self.remote_events = []   # from xdist workers (controller only)
        self.memory = []          # (wall time, bytes) of this process tree
        self.outcomes = {}        # nodeid -> outcome (the reporting process)
        self.errors = []          # files that could not be written
        self.notes = []           # summary lines from other parts (the lane)
        self._sampling = None
        self._spool = None
        self._spooled = set()     # workers whose spool the controller has read
        self.deaths = {}          # worker -> (cause, evidence) (controller only)
        if spool_dir and settings.worker:
            self._spool = open(os.path.join(spool_dir, f"{settings.worker}.jsonl"), "a",
                               encoding="utf-8")

    def new_event(self, nodeid, heavy, rule, **extra):
        event = {"nodeid": nodeid, "kind": "test", "worker": self.settings.worker,
                 "heavy": heavy, "rule": rule, "start": time.time(), "wait_start": None,
                 "acquired": None, "released": None, "end": None}
        event.update(extra)
        self.events.append(event)
        self.touch(event)
        return event

    def touch(self, event):
        """The event changed: keep the spool (if any) up to date."""
        if self._spool is not None:
            self._spool.write(json.dumps(event) + "\n")
            self._spool.flush()

    def all_events(self):
        events = self.events + self.remote_events
        for e in events:
            if e.get("kind", "test") == "test" and e["nodeid"] in self.outcomes:
                e["outcome"] = self.outcomes[e["nodeid"]]
        return sorted(events, key=lambda e: e["start"])

    def logreport(self, report):
        outcome = outcome_of(report)
        if outcome is not None and self.outcomes.get(report.nodeid) not in ("failed", "error"):
            self.outcomes[report.nodeid] = outcome

    def crashed(self, nodeid, worker):
        """xdist: `worker` died while running `nodeid`.  Its last spooled
        state stays, ended now; without one, the test is still listed."""
        now = time.time()
        for e in reversed(self.remote_events):
            if e["nodeid"] == nodeid and e.get("kind", "test") == "test" and (
                    e["end"] is None or e.get("outcome") == "crashed"):
                break
        else:
            e = {"nodeid": nodeid, "kind": "test", "worker": worker, "heavy": None,
                 "rule": None, "start": now, "wait_start": None, "acquired": None,
                 "released": None, "end": None}
            self.remote_events.append(e)
        self._ended_by_crash(e, now)
        self.outcomes[nodeid] = "crashed"

    def died(self, worker, cause, evidence):
        """xdist: why `worker` died (before its events are ended by it)."""
        self.deaths[worker] = (cause, evidence)

    def _ended_by_crash(self, e, now):
        if e["end"] is None:
            e["end"] = now
        if e["acquired"] and not e["released"]:
            e["released"] = e["end"]  # the kernel dropped the lock with the process
        e["outcome"] = "crashed"
        e["cause"], e["cause_evidence"] = self.deaths.get(e.get("worker"), (UNKNOWN, None))

    # -- memory

    def start_sampling(self, interval=0.1):
        """Sample the memory of this process and its children (xdist workers,
        model servers) until stop_sampling()."""
        if backends._native is None:
            return
        stop = threading.Event()

        def run():
            pid = os.getpid()
            while not stop.is_set():
                b = backends._native.tree_rss(pid)
                if b:
                    self.memory.append((time.time(), b))
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

    # -- xdist: workers hand their events to the controller

    def to_workeroutput(self, workeroutput):
        workeroutput["heavylock_events"] = json.dumps(self.events)

    def from_workeroutput(self, workeroutput):
        data = (workeroutput or {}).get("heavylock_events")
        if data:
            self.remote_events.extend(json.loads(data))
            return True
        return False

    def from_spool(self, spool_dir, worker):
        """A worker died: take the last spooled state of each of its events
        (once: xdist may report the crash before or after the node is down)."""
        if worker in self._spooled:
            return
        self._spooled.add(worker)
        latest = {}
        try:
            with open(os.path.join(spool_dir, f"{worker}.jsonl"), encoding="utf-8") as f:
                for line in f:
                    try:
                        e = json.loads(line)
                    except ValueError:
                        continue  # the line it was writing when it died
                    latest[(e.get("kind"), e["nodeid"], e["start"])] = e
        except OSError:
            return
        now = time.time()
        for e in latest.values():
            if e["end"] is None:  # running when the worker died (a test or an import)
                self._ended_by_crash(e, now)
        self.remote_events.extend(latest.values())

    def close(self):
        if self._spool is not None:
            self._spool.close()
            self._spool = None

    # -- at the end

    def write_files(self, config):
        events = self.all_events()
        s = self.settings
        if s.report:
            try:
                write_output(s.report, json.dumps(
                    {"schema": SCHEMA, "lock": s.shown_path, "source": s.path_source,
                     "backend": s.backend, "rules": list(s.rules),
                     "resident_warn": s.resident_warn, "events": events,
                     "memory": self.memory}, indent=1))
            except OSError as exc:
                self.errors.append(f"could not write the report {s.report}: {exc.strerror} "
                                   "(the run fails)")
        if s.timeline:
            from heavylock import timeline as tl

            try:
                tl.write(s.timeline, events, self.memory,
                         title=f"heavylock timeline: {config.rootpath.name}")
            except OSError as exc:
                self.errors.append(f"could not write the timeline {s.timeline}: "
                                   f"{exc.strerror} (the run fails)")

    def not_locked(self, tests):
        """'3 skipped (not opted in), 1 timed out, 2 errors' for the heavy
        tests that did not take the lock, or '' when there are none."""
        counts = {}
        for e in tests:
            why = e.get("no_lock")  # (a test skipped by its own mark has no event)
            if why:
                counts[why] = counts.get(why, 0) + 1
        shown = {"skipped": "skipped (not opted in, or no LOCAL_MODEL_PATH)",
                 "timed out": "timed out waiting (--heavylock-timeout)",
                 "error": "could not take the lock (errors)"}
        return ", ".join(f"{counts[k]} {shown[k]}" for k in shown if k in counts)

    def heavy_imports(self):
        """Imports worth a line: those that loaded a model (or name a token
        at import time), and slow or big ones that loaded none."""
        return [e for e in self.events + self.remote_events
                if e.get("kind") == "import" and e.get("seconds") is not None
                and (e.get("model") or e.get("rule", "").startswith("token ")
                     or e["seconds"] >= IMPORT_WARN_SECONDS
                     or (e.get("rss_growth") or 0) >= IMPORT_WARN_BYTES)]

    def left_resident(self):
        """Heavy tests that left memory resident, when that costs a copy: only
        if heavy tests ran in more than one process.  A session model kept by
        the one process that runs every heavy test (a heavy lane, no xdist)
        is loaded once, which is the point."""
        limit = self.settings.resident_warn
        if not limit:
            return []
        heavy = [e for e in self.events + self.remote_events
                 if e.get("kind", "test") == "test" and e.get("acquired")]
        if len({e.get("worker") for e in heavy}) < 2:
            return []
        return [e for e in heavy if (e.get("resident") or 0) > limit]

    def summary(self, tr, config):
        everything = self.events + self.remote_events
        tests = [e for e in everything if e.get("kind", "test") != "import"]
        events = [e for e in tests if e.get("acquired")]
        problems = (self.heavy_imports() or self.left_resident() or self.errors
                    or any(e.get("outcome") == "crashed" or e.get("lost") for e in everything))
        said = self.not_locked(tests)
        if not events and not problems:
            if said:
                tr.write_sep("-", "heavylock")
                tr.write_line(f"heavy tests were selected but none took the lock: {said}")
            return
        tr.write_sep("-", "heavylock")
        tr.write_line(f"lock: {self.settings.where()}")
        for line in self.notes:
            tr.write_line(line)
        if events:
            waits = [(e["acquired"] - e["wait_start"], e["nodeid"]) for e in events]
            holds = [((e["released"] or e["end"] or e["acquired"]) - e["acquired"],
                      e["nodeid"]) for e in events]
            worst = max(waits)
            tr.write_line(f"{len(events)} tests took the lock: waited "
                          f"{sum(w for w, _ in waits):.2f} s in total, worst {worst[0]:.2f} s "
                          f"({worst[1]}); held {sum(h for h, _ in holds):.2f} s in total")
            tr.write_line("slowest holders:")
            for held, nodeid in sorted(holds, reverse=True)[:5]:
                tr.write_line(f"  {held:7.2f} s  {nodeid}")
            if said:
                tr.write_line(f"other heavy tests did not take the lock: {said}")
        if self.settings.slots != 1 and events:
            counts = {}
            for e in events:
                src = e.get("weight_source") or "unknown"
                counts[src] = counts.get(src, 0) + 1
            order = ("declared", "measured", "estimated", "unknown")
            said = ", ".join(f"{counts[k]} {'unknown (exclusive)' if k == 'unknown' else k}"
                             for k in order if k in counts)
            tr.write_line(f"weights of the {len(events)} heavy tests: {said} (declared: "
                          "@pytest.mark.llm(mem=...); measured: peak of an earlier run; "
                          "estimated: the GGUF model's header)")
        for e in everything:
            if e.get("lost"):
                tr.write_line(f"{e['nodeid']}: {e['lost']}", red=True)
        for e in sorted(self.left_resident(), key=lambda e: -e["resident"]):
            where = f" [{e['worker']}]" if e.get("worker") else ""
            tr.write_line(f"{e['nodeid']}{where} left {e['resident'] / MiB:.0f} MiB resident "
                          "after release: the next heavy test on another worker adds a copy "
                          "(free the model in the fixture's teardown; keep it out of module "
                          "globals and caches)")
        by_module = {}
        for e in self.heavy_imports():
            by_module.setdefault(e["nodeid"], []).append(e)
        for nodeid, imports in sorted(by_module.items()):
            tr.write_line(describe_import(nodeid, imports))
        for e in everything:
            if e.get("outcome") == "crashed":
                what = "importing" if e.get("kind") == "import" else "running"
                held = ", holding the lock" if e.get("acquired") else ""
                evidence = f" ({e['cause_evidence']})" if e.get("cause_evidence") else ""
                tr.write_line(f"{e['nodeid']}: its worker {e.get('worker') or ''} died while "
                              f"{what} it{held}: {e.get('cause') or UNKNOWN}{evidence}")
        if self.memory:
            tr.write_line(f"peak memory of the process tree: "
                          f"{max(b for _, b in self.memory) / MiB:.0f} MiB")
        if self.settings.timeline and not self.errors:
            tr.write_line(f"timeline: {self.settings.timeline}")
        for err in self.errors:
            tr.write_line(f"heavylock: {err}", red=True)
