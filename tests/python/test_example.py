"""The example LLM app (examples/llm-app): its fast suite always; its real
model tests (llama.cpp on the CPU, SmolLM2-135M GGUF) when `make test` has
set them up (LLM_APP_MODEL names the model file)."""

import os
import subprocess
import sys
import threading
import xml.etree.ElementTree as ET

import pytest

from helpers import overlaps

APP = os.path.join(os.path.dirname(__file__), "..", "..", "examples", "llm-app")
MODEL = os.environ.get("LLM_APP_MODEL", "")


def run_app(*args, env_extra=None, sample=False):
    env = {k: v for k, v in os.environ.items()
           if k not in ("RUN_HEAVY_INTEGRATION", "LOCAL_MODEL_PATH", "HEAVYLOCK_PATH",
                        "PYTEST_ADDOPTS")}
    env.update(env_extra or {})
    p = subprocess.Popen([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args],
                         cwd=APP, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         text=True)
    peak = 0
    done = threading.Event()

    def sampler():
        from heavylock import _native
        nonlocal peak
        while not done.is_set():
            peak = max(peak, _native.tree_rss(p.pid) or 0)
            done.wait(0.02)

    t = threading.Thread(target=sampler)
    if sample:
        t.start()
    out = p.communicate(timeout=600)[0]
    done.set()
    if sample:
        t.join()
    return p.returncode, out, peak


def test_fast_suite_by_default():
    rc, out, _ = run_app("-n", "2", "-p", "xdist")
    assert rc == 0, out
    assert "8 passed, 5 skipped" in out


def model_ready():
    if not MODEL or not os.path.isfile(MODEL):
        pytest.skip("the example model is not set up (make test sets LLM_APP_MODEL)")
    pytest.importorskip("llama_cpp")


def test_real_model_loads_never_overlap_and_use_less_memory(tmp_path):
    model_ready()
    opt_in = {"RUN_HEAVY_INTEGRATION": "1", "LOCAL_MODEL_PATH": MODEL}
    loads = tmp_path / "loads"
    timeline = tmp_path / "timeline.svg"
    # the lock alone, across workers (the heavy lane, the default, would put every
    # test on one worker: make demo shows that run)
    rc, out, peak_with = run_app("-n", "4", "-p", "xdist", "--heavylock-lane=off",
                                 f"--heavylock-timeline={timeline}",
                                 env_extra={**opt_in, "LLM_APP_LOAD_LOG": str(loads)},
                                 sample=True)
    assert rc == 0, out
    assert "13 passed" in out
    iv = sorted((float(a), float(b), int(pid))
                for pid, a, b in (ln.split() for ln in loads.read_text().splitlines()))
    assert len(iv) == 5  # every real model load, from fixture setup to teardown
    assert len({pid for *_, pid in iv}) > 1  # on several workers
    assert overlaps(iv) == []

    loads_without = tmp_path / "loads-without"
    rc, out, peak_without = run_app("-n", "4", "-p", "xdist", "-p", "no:heavylock",
                                    env_extra={**opt_in, "LLM_APP_LOAD_LOG": str(loads_without)},
                                    sample=True)
    assert rc == 0, out
    assert peak_with < peak_without, (peak_with, peak_without)

    # the picture: valid SVG, one row per worker, one bar per test
    root = ET.parse(timeline).getroot()
    ns = {"s": "http://www.w3.org/2000/svg"}
    rows = root.findall("s:g[@class='row']", ns)
    assert sorted(r.get("data-worker") for r in rows) == ["gw0", "gw1", "gw2", "gw3"]
    bars = root.findall(".//s:rect[@class='test']", ns)
    assert len(bars) == 13
    assert root.find("s:polyline[@class='memory']", ns) is not None


def test_timeline_html_without_xdist(pytester, tmp_path):
    pytester.makepyfile("""
        import pytest
        @pytest.mark.llm
        def test_h(): pass
        def test_l(): pass
    """)
    out = tmp_path / "t.html"
    r = pytester.runpytest_subprocess(f"--heavylock-timeline={out}")
    r.assert_outcomes(passed=2)
    text = out.read_text()
    assert text.startswith("<!DOCTYPE html>") and "http" not in text.split("<svg", 1)[0]
    svg = ET.fromstring(text[text.index("<svg"):text.index("</svg>") + 6])
    ns = {"s": "http://www.w3.org/2000/svg"}
    assert [r.get("data-worker") for r in svg.findall("s:g[@class='row']", ns)] == ["main"]
    assert len(svg.findall(".//s:rect[@class='test']", ns)) == 2
