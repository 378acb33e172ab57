"""The README is the front door (issue #16): the two commands first, an
install that works while the package is not on PyPI, and links that
resolve.  Links are absolute (they must render on PyPI); each one into this
repository must name a file that exists."""
import glob
import os
import re

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
BLOB = "https://github.com/heavylock/heavylock/blob/main/"


def _read(path):
    with open(os.path.join(ROOT, path), encoding="utf-8") as f:
        return f.read()


def test_readme_first_screen_has_the_commands_and_an_install_that_works():
    first = "\n".join(_read("README.md").splitlines()[:40])
    assert "make demo" in first and "make test" in first
    # pip install pytest-heavylock finds nothing yet: the first screen says
    # so and gives commands that work now.
    assert "not on PyPI yet" in first
    assert "make dist && pip install dist/*.whl" in first
    assert "pip install git+https://github.com/heavylock/heavylock" in first


def test_readme_stays_a_front_door():
    readme = _read("README.md")
    assert len(readme.splitlines()) <= 250, "move detail into docs/ pages"
    for page in ("plugin", "cli", "python-api", "c-api", "across-machines", "tuning",
                 "porting", "layout"):
        assert f"{BLOB}docs/{page}.md" in readme, page


def _slugs(text):
    """GitHub's anchors for the headings of a Markdown text."""
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-")
            for h in re.findall(r"^#+ (.*)$", text, re.M)}


def test_links_into_the_repository_resolve():
    docs = ["README.md"] + [os.path.relpath(p, ROOT) for p in glob.glob(f"{ROOT}/docs/*.md")]
    for doc in docs:
        text = _read(doc)
        for target in re.findall(r"\]\((\S+?)\)", text):
            if target.startswith(BLOB):
                path = target[len(BLOB):].split("#")[0]
                assert os.path.exists(os.path.join(ROOT, path)), f"{doc}: {target}"
            elif target.startswith("#"):
                assert target[1:] in _slugs(text), f"{doc}: no heading for {target}"
            else:
                assert re.match(r"https?://", target), f"{doc}: relative link {target}"
