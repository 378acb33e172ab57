"""What happened in a run: one event per test (wait, hold, start, end), the
sampled memory of the process tree, and what is made of them at the end:
the terminal summary, the JSON report and the timeline."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

from heavylock import backends


class Recorder:
    def __init__(self, settings):
        self.settings = settings
        self.events = []          # this process's tests
        self.remote_events = []   # from xdist workers (controller only)
        self.memory = []          # (wall time, bytes) of this process tree
        self.notes = []           # summary lines from other parts (the lane)
        self._sampling = None

    def new_event(self, nodeid, heavy, rule, **extra):
        event = {"nodeid": nodeid, "worker": self.settings.worker, "heavy": heavy,
                 "rule": rule, "start": time.time(), "wait_start": None, "acquired": None,
                 "released": None, "end": None}
        event.update(extra)
        self.events.append(event)
        return event

    def all_events(self):
        return sorted(self.events + self.remote_events, key=lambda e: e["start"])

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

    # -- xdist: workers hand their events to the controller

    def to_workeroutput(self, workeroutput):
        workeroutput["heavylock_events"] = json.dumps(self.events)

    def from_workeroutput(self, workeroutput):
        data = (workeroutput or {}).get("heavylock_events")
        if data:
            self.remote_events.extend(json.loads(data))

    # -- at the end

    def write_files(self, config):
        events = self.all_events()
        report = config.getoption("heavylock_report")
        if report:
            s = self.settings
            Path(report).write_text(json.dumps(
                {"lock": s.path, "source": s.path_source, "backend": s.backend,
                 "events": events, "memory": self.memory}, indent=1))
        timeline = config.getoption("heavylock_timeline")
        if timeline:
            from heavylock import timeline as tl

            tl.write(timeline, events, self.memory,
                     title=f"heavylock timeline: {config.rootpath.name}")

    def summary(self, tr, config):
        everything = self.events + self.remote_events
        events = [e for e in everything if e.get("acquired")]
        if not events:
            if any(e["heavy"] for e in everything):
                tr.write_sep("-", "heavylock")
                tr.write_line("heavy tests were selected but none took the lock (all skipped)")
            return
        waits = [(e["acquired"] - e["wait_start"], e["nodeid"]) for e in events]
        holds = [((e["released"] or e["end"] or e["acquired"]) - e["acquired"], e["nodeid"])
                 for e in events]
        worst = max(waits)
        tr.write_sep("-", "heavylock")
        tr.write_line(f"lock: {self.settings.where()}")
        for line in self.notes:
            tr.write_line(line)
        tr.write_line(f"{len(events)} tests took the lock: waited "
                      f"{sum(w for w, _ in waits):.2f} s in total, worst {worst[0]:.2f} s "
                      f"({worst[1]}); held {sum(h for h, _ in holds):.2f} s in total")
        tr.write_line("slowest holders:")
        for held, nodeid in sorted(holds, reverse=True)[:5]:
            tr.write_line(f"  {held:7.2f} s  {nodeid}")
        if self.memory:
            tr.write_line(f"peak memory of the process tree: "
                          f"{max(b for _, b in self.memory) / 2**20:.0f} MiB")
        timeline = config.getoption("heavylock_timeline")
        if timeline:
            tr.write_line(f"timeline: {os.path.abspath(timeline)}")
