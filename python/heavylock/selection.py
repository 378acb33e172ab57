"""Which tests are heavy: the seed's rules, first match decides.

1. a heavy marker: ``@pytest.mark.llm`` (more names: ini ``heavylock_markers``);
2. ``RUN_HEAVY_INTEGRATION`` is 1/true/yes (or ``--heavylock-run-heavy``): every test;
3. the test file lies under ``tests/scripts/`` (ini ``heavylock_paths``);
4. the test requests the ``local_model_path`` fixture;
5. a token (``LocalLLMClient``, ``LocalLLMProvider``, ``LOCAL_MODEL_PATH``,
   ``USE_LOCAL_LLM``; ini ``heavylock_tokens``) appears in the source of the
   test function, of its class, or of a fixture it requests, followed
   through the fixtures those request in turn.  Autouse fixtures are not
   scanned (they run for every test).  Files that hold no token anywhere are
   skipped without parsing, and sources are cached per file and line.

Their names, for ini ``heavylock_rules``: marker, env, path, fixture, token.

Importing a test module is part of its tests: a module (or a conftest.py)
that a rule makes heavy is imported under the lock (``module_verdict``),
unless an earlier run measured that importing this very content loads no
model (``imports.py``).
"""

from __future__ import annotations

import ast
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

    def module_marker(self, filename, markers):
        """The heavy marker a module-level ``pytestmark`` names, or None."""
        text = "".join(linecache.getlines(filename))
        if "pytestmark" not in text:
            return None
        try:
            tree = ast.parse(text, filename)
        except (SyntaxError, ValueError):
            return None  # the import will report it
        for node in tree.body:
            if isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                if any(isinstance(t, ast.Name) and t.id == "pytestmark" for t in targets):
                    seg = ast.get_source_segment(text, node.value) or ""
                    for name in markers:
                        if f"mark.{name}" in seg:
                            return name
        return None

    def find_at_import(self, filename):
        """The first token in the code a module runs when imported, or None."""
        if not self._file_may_have(filename):
            return None
        text = "".join(linecache.getlines(filename))
        try:
            tree = ast.parse(text, filename)
        except (SyntaxError, ValueError):
            return None  # the import will report it
        found = []

        def visit(body):
            for node in body:
                if isinstance(node, (ast.Import, ast.ImportFrom, ast.FunctionDef,
                                     ast.AsyncFunctionDef)):
                    continue
                if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
                    continue  # a docstring runs nothing
                if isinstance(node, ast.ClassDef):
                    visit(node.body)  # a class body runs at import; its methods do not
                    continue
                if isinstance(node, ast.If) and "__main__" in (ast.get_source_segment(
                        text, node.test) or ""):
                    visit(node.orelse)  # `if __name__ == "__main__":` runs as a script only
                    continue
                seg = ast.get_source_segment(text, node) or ""
                found.extend(t for t in self.tokens if t in seg)

        visit(tree.body)
        return found[0] if found else None


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
        self.every_test = self.every_test_reason()

    def every_test_reason(self):
        """Why every test is heavy (the opt-in, named by the source that
        gave it), or None when that rule does not apply.  Marked tests still
        say their marker; this is the reason for the run as a whole."""
        s = self.settings
        if s.run_heavy and "env" in s.rules:
            return f"{s.run_heavy_source} (every test)"
        return None

    def verdict(self, item):
        """(heavy, rule) for one test."""
        v = item.stash.get(VERDICT_KEY, None)
        if v is None:
            v = item.stash[VERDICT_KEY] = self._decide(item)
        return v

    def _under_heavy_path(self, rel):
        """The heavy folder that holds rootdir-relative "/"-separated `rel`, or None."""
        if "path" not in self.settings.rules:
            return None
        rel = "/" + rel
        for p in self.settings.paths:
            if f"/{p}/" in rel:
                return p
        return None

    def module_verdict(self, path, rootpath):
        """(heavy, rule) for importing the test module (or conftest) at
        `path`, by the rules that apply, as for its tests: a heavy marker on
        the whole module (``pytestmark``); the opt-in (every test, so every
        import); a heavy folder; a token in its import-time code (module
        level and class bodies, not function bodies, not import statements:
        naming a class loads nothing, calling it might).  So the strict
        preset (marker env) still imports under the lock when opted in."""
        try:
            rel = os.path.relpath(str(path), str(rootpath)).replace(os.sep, "/")
        except ValueError:  # another drive (Windows)
            rel = str(path)
        if "marker" in self.settings.rules:
            name = self.scanner.module_marker(str(path), self.settings.markers)
            if name:
                return True, f"pytestmark @pytest.mark.{name}"
        if self.every_test is not None:
            return True, self.every_test
        p = self._under_heavy_path(rel)
        if p is not None:
            return True, f"file under {p}/"
        if "token" in self.settings.rules and self.settings.tokens:
            tok = self.scanner.find_at_import(str(path))
            if tok:
                return True, f"token {tok} in import-time code"
        return False, "no rule matched"

    def _decide(self, item):
        s = self.settings
        rules = s.rules
        if "marker" in rules:
            for name in s.markers:
                if item.get_closest_marker(name) is not None:
                    return True, f"marker @pytest.mark.{name}"
        if self.every_test is not None:
            return True, self.every_test
        p = self._under_heavy_path(item.nodeid.split("::", 1)[0])  # rootdir-relative
        if p is not None:
            return True, f"file under {p}/"
        fixtures = list(requested_fixtures(item))
        if "fixture" in rules and any(name == "local_model_path" for name, _ in fixtures):
            return True, "uses fixture local_model_path"
        if s.tokens and "token" in rules:
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
