"""Which tests are heavy: the seed's rules, first match decides.

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
"""

from __future__ import annotations

import inspect
import linecache
import os

import pytest

VERDICT_KEY = pytest.StashKey["tuple"]()


class TokenScanner:
    """Finds heavy tokens in sources, reading each file at most once."""

    def __init__(self, tokens):
        self.tokens = tokens
        self._file_has = {}
        self._source = {}
        self._own = os.path.dirname(os.path.abspath(__file__))

    def _file_may_have(self, filename):
        """False when the file holds no token at all (or is this package's)."""
        hit = self._file_has.get(filename)
        if hit is None:
            if os.path.dirname(os.path.abspath(filename)) == self._own:
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


def requested_fixtures(item):
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


class Selector:
    """The verdict for each test, computed once and kept in the item's stash."""

    def __init__(self, settings):
        self.settings = settings
        self.scanner = TokenScanner(settings.tokens)

    def verdict(self, item):
        """(heavy, rule) for one test."""
        v = item.stash.get(VERDICT_KEY, None)
        if v is None:
            v = item.stash[VERDICT_KEY] = self._decide(item)
        return v

    def _decide(self, item):
        s = self.settings
        for name in s.markers:
            if item.get_closest_marker(name) is not None:
                return True, f"marker @pytest.mark.{name}"
        if s.run_heavy:
            return True, "RUN_HEAVY_INTEGRATION / --run-heavy (every test)"
        if s.paths:
            rel = "/" + item.nodeid.split("::", 1)[0]  # relative to rootdir, "/"-separated
            for p in s.paths:
                if f"/{p}/" in rel:
                    return True, f"file under {p}/"
        fixtures = list(requested_fixtures(item))
        if any(name == "local_model_path" for name, _ in fixtures):
            return True, "uses fixture local_model_path"
        if s.tokens:
            fn = getattr(item, "obj", None)
            if fn is not None:
                tok = self.scanner.find(fn)
                if tok:
                    return True, f"token {tok} in test source"
            cls = getattr(item, "cls", None)
            if cls is not None:
                tok = self.scanner.find(cls)
                if tok:
                    return True, f"token {tok} in class {cls.__name__}"
            for name, fd in fixtures:
                tok = self.scanner.find(fd.func)
                if tok:
                    return True, f"token {tok} in fixture {name}"
        return False, "no rule matched"
