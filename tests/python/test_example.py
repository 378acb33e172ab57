"""The example LLM app (examples/llm-app) without the model: its fast suite,
the timeline, the set-up's smoke inference.  The real model's tests are in
test_example_model.py."""

import os
import subprocess
import sys
import threading
import xml.etree.ElementTree as ET

import pytest

APP = os.path.join(os.path.dirname(__file__), "..", "..", "examples", "llm-app")


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


def test_smoke_inference_names_the_signal_the_library_and_the_remedy(tmp_path):
    """The set-up's smoke inference (examples/llm-app/smoke.py) against a
    llama.cpp that dies by SIGSEGV on its first inference, as the native
    build did on this VM (AMX): a fake llama_cpp whose Llama segfaults."""
    fake = tmp_path / "fake"
    (fake / "llama_cpp").mkdir(parents=True)
    (fake / "llama_cpp" / "__init__.py").write_text(
        "import ctypes\n"
        "class Llama:\n"
        "    def __init__(self, **kw): pass\n"
        "    def __call__(self, *a, **kw): ctypes.string_at(0)  # a real SIGSEGV\n")
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF")
    wheels = tmp_path / "wheels" / "llama-cpp-python-0.3.36-portable"
    p = subprocess.run([sys.executable, os.path.join(APP, "smoke.py"), str(model),
                        "--wheel-dir", str(wheels), "--build", "portable"],
                       env={**os.environ, "PYTHONPATH": str(fake)},
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 1, (p.returncode, p.stdout, p.stderr)
    msg = p.stderr
    assert "died by SIGSEGV (Segmentation fault)" in msg, msg
    assert "libggml-cpu.so" in msg and "llama.cpp" in msg, msg
    assert f"rm -rf {wheels}" in msg and "LLAMA_BUILD=native" in msg, msg
    assert "Fatal Python error: Segmentation fault" in msg, msg  # the child's own trace


def test_smoke_inference_passes_a_working_library(tmp_path):
    """The same check against a llama_cpp that answers: it passes and shows
    the answer (so the failure above is the signal, not the set-up)."""
    fake = tmp_path / "fake"
    (fake / "llama_cpp").mkdir(parents=True)
    (fake / "llama_cpp" / "__init__.py").write_text(
        "class Llama:\n"
        "    def __init__(self, **kw): pass\n"
        "    def __call__(self, prompt, **kw):\n"
        "        assert prompt.startswith('<|im_start|>system')\n"
        "        return {'choices': [{'text': ' Hello!'}]}\n"
        "    def close(self): pass\n")
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF")
    p = subprocess.run([sys.executable, os.path.join(APP, "smoke.py"), str(model),
                        "--wheel-dir", str(tmp_path), "--build", "native"],
                       env={**os.environ, "PYTHONPATH": str(fake)},
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert "smoke inference (native llama.cpp): 'Hello!'" in p.stdout
