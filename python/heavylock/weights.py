"""How heavy each heavy test is: the bytes it asks the lock to admit (its
weight), and where that number came from.  Three sources, the first that
knows wins:

1. declared: ``@pytest.mark.llm(mem="2G")`` (any heavy marker's ``mem``);
2. measured: the test's peak resident memory in an earlier run (kept in
   pytest's cache under ``heavylock/weights``);
3. estimated: the GGUF model's footprint from its header, for a test that
   uses ``local_model_path`` (or any heavy test when ``LOCAL_MODEL_PATH``
   names a GGUF file), with the KV cache for the context the test declares
   (``@pytest.mark.llm(ctx=256)``), else for the model's own context length.

Unknown is 0, which the lock treats as exclusive (the safe guess).

The measured peak is the growth of the test's process over what it used
when it took the lock: Linux resets the high-water mark (``VmHWM``) when "5"
is written to ``/proc/self/clear_refs``; the peak of the children it waited
for comes from ``RUSAGE_CHILDREN`` (which cannot be reset, so it counts only
when it rose during the test).  What the process used before is already
gone from the live memory the lock judges against; only the growth is new.
"""

from __future__ import annotations

import os

from heavylock import backends
from heavylock.settings import size_parse

try:
    import resource
except ImportError:  # not Unix
    resource = None

CACHE_KEY = "heavylock/weights"
SOURCES = ("declared", "measured", "estimated", "unknown")
MIN_MEASURED = 2**20   # a test that grew less still shares: 1 MiB, not 0 (exclusive)


def _vm_hwm():
    """This process's peak resident bytes since the last reset, or None."""
    try:
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _children_peak():
    if resource is None:
        return 0
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024  # KiB on Linux


class PeakMeter:
    """One heavy test's peak: start() when it took the lock, stop() after
    its teardown."""

    def __init__(self):
        self._base = None
        self._children = 0

    def start(self, rss_now):
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            self._base = None
            return
        self._base = rss_now
        self._children = _children_peak()

    def stop(self):
        """Bytes the test added at its peak (None when it cannot be told)."""
        if self._base is None:
            return None
        hwm = _vm_hwm()
        base, self._base = self._base, None
        if hwm is None:
            return None
        grown = max(hwm - base, 0)
        children = _children_peak()
        if children > self._children:
            grown += children  # a child (a model server) peaked higher during this test
        return max(grown, MIN_MEASURED)


class Weights:
    """The weights of one run's heavy tests: {nodeid: (bytes, source)}."""

    def __init__(self, config, settings):
        self.config = config
        self.settings = settings
        self._measured = None
        self._estimates = {}  # {ctx: (bytes, model path)}
        self._known = {}

    @property
    def measured(self):
        """{nodeid: bytes} from earlier runs (read on first use: pytest's
        cache may be set up after this plugin's configure)."""
        if self._measured is None:
            cache = getattr(self.config, "cache", None)
            data = cache.get(CACHE_KEY, {}) if cache is not None else {}
            self._measured = ({k: int(v) for k, v in data.items()
                               if isinstance(v, (int, float)) and v > 0}
                              if isinstance(data, dict) else {})
        return self._measured

    def model_estimate(self, ctx=0):
        """(bytes, model path) from LOCAL_MODEL_PATH's GGUF header with a KV
        cache for `ctx` tokens (0: the model's own context), or (0, None)."""
        if ctx not in self._estimates:
            self._estimates[ctx] = (0, None)
            model = os.environ.get("LOCAL_MODEL_PATH")
            estimate = getattr(backends._native, "gguf_estimate", None)
            if model and estimate is not None and os.path.isfile(model):
                try:
                    self._estimates[ctx] = (int(estimate(model, ctx)["total"]), model)
                except (OSError, ValueError, KeyError):
                    pass  # not a GGUF file: nothing to estimate
        return self._estimates[ctx]

    def declared(self, item, key="mem"):
        """(value as written, marker name) of the first heavy marker with key=."""
        for name in self.settings.markers:
            for mark in item.iter_markers(name):
                if key in mark.kwargs:
                    return mark.kwargs[key], name
        return None, None

    def of(self, item):
        """(bytes, source, problem): problem names a bad declared value."""
        nodeid = item.nodeid
        if nodeid in self._known:
            return self._known[nodeid]
        value, marker = self.declared(item)
        if value is not None:
            try:
                n = size_parse(value)
            except (ValueError, TypeError):
                n = -1
            if n <= 0:
                out = (0, "unknown", f"{nodeid}: @pytest.mark.{marker}(mem={value!r}) is not "
                       "a size: use 512M, 2G, 1.5GiB or a number of bytes")
            else:
                out = (n, "declared", None)
        elif nodeid in self.measured:
            out = (self.measured[nodeid], "measured", None)
        else:
            # Only a GGUF file has an estimate, and then it is the model every
            # heavy test of the run loads (local_model_path or not), with the
            # context the test says it runs it with.
            ctx, marker = self.declared(item, "ctx")
            if ctx is not None and (type(ctx) is not int or not 0 < ctx <= 2**32):
                out = (0, "unknown", f"{nodeid}: @pytest.mark.{marker}(ctx={ctx!r}) is not a "
                       "context length: use a number of tokens, such as 256")
            else:
                est, _model = self.model_estimate(ctx or 0)
                out = (est, "estimated", None) if est else (0, "unknown", None)
        self._known[nodeid] = out
        return out

    def save(self, events):
        """Keep the measured peaks of this run's heavy tests for the next."""
        cache = getattr(self.config, "cache", None)
        new = {e["nodeid"]: e["peak"] for e in events
               if e.get("kind", "test") == "test" and e.get("peak")}
        if cache is None or not new:
            return
        merged = dict(self.measured)
        merged.update(new)
        cache.set(CACHE_KEY, merged)


def describe(n, source):
    from heavylock.settings import size_format

    if source == "unknown" or not n:
        return "weight unknown (exclusive)"
    return f"weight {size_format(n)} ({source})"
