#!/usr/bin/env python3
"""Print the tests of one C test file, one name a line, for meson.build.

The file's T() table (`static const struct test_entry tests[]`) is the one
list of its tests: meson.build registers what this prints, so a test cannot
be written and never run.  Fails (exit 1, naming the file and the name) when
the table and the defined `static void test_NAME(void)` functions disagree:
a function missing from the table would be dead, a table entry without one
would not compile anyway but is said plainly here.
"""
import re
import sys


def main(path):
    with open(path, encoding="utf-8") as f:
        src = f.read()
    table = re.search(r"static const struct test_entry tests\[\] = \{(.*?)\n\};", src, re.S)
    if not table:
        sys.exit(f"{path}: no `static const struct test_entry tests[]` table")
    body = re.sub(r"#define T\(n\).*|#undef T", "", table.group(1))
    names = re.findall(r"\bT\((\w+)\)", body)
    defined = re.findall(r"^static void test_(\w+)\(void\)", src, re.M)
    errors = [f"{path}: T({n}) is listed twice" for n in sorted({n for n in names if names.count(n) > 1})]
    errors += [f"{path}: test_{n}() is defined but not in the T() table" for n in defined if n not in names]
    errors += [f"{path}: T({n}) has no `static void test_{n}(void)`" for n in names if n not in defined]
    if errors:
        sys.exit("\n".join(errors))
    print("\n".join(names))


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: list-tests.py TESTFILE.c")
    main(sys.argv[1])
