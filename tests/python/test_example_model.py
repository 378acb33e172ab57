"""The example LLM app (examples/llm-app) with its real model (llama.cpp on
the CPU, SmolLM2-135M GGUF), set up by `make test-example-model`
(LLM_APP_MODEL names the model file)."""

import os
from pathlib import Path
import xml.etree.ElementTree as ET

import pytest

from helpers import overlaps
from test_cli_slots import _estimate, run
from test_example import run_app
from heavylock import _native

MODEL = os.environ.get("LLM_APP_MODEL", "")


def model_ready():
    """Skips when run without the model; under `make test` (which sets
    LLM_APP_MODEL after setting the model up) a missing piece fails."""
    if not MODEL:
        pytest.skip("the example model is not set up (make test-example-model sets LLM_APP_MODEL)")
    assert os.path.isfile(MODEL), f"LLM_APP_MODEL={MODEL}: no such file"
    import llama_cpp  # noqa: F401  (installed by make example-setup)


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

def test_cli_gguf_prints_the_real_models_estimate():
    model_ready()
    cli = os.environ["HEAVYLOCK_CLI"]
    r = run(cli, "gguf", MODEL)
    assert r.returncode == 0, r.stderr
    # SmolLM2-135M: 30 layers x 8192 tokens x 3 KV heads x (64 + 64) x 2 bytes
    assert f"kv cache (f16, 8192 tokens): {30 * 8192 * 3 * 128 * 2} bytes" in r.stdout
    assert "estimate:" in r.stdout
    full, _, _ = _estimate(r.stdout)
    # The application runs it with 256 tokens: --ctx says so (issue #16).
    r = run(cli, "gguf", "--ctx", "256", MODEL)
    assert r.returncode == 0, r.stderr
    assert f"kv cache (f16, 256 tokens): {30 * 256 * 3 * 128 * 2} bytes" in r.stdout
    small, kv, _ = _estimate(r.stdout)
    assert small == full - 30 * (8192 - 256) * 3 * 128 * 2 and small < full * 0.6, (small, full)


def test_gguf_estimate_of_the_real_model(tmp_path):
    model_ready()
    m = Path(MODEL)
    e = _native.gguf_estimate(m)
    info = _native.gguf_info(m)
    assert e["total"] == e["weights"] + e["kv_cache"] + e["overhead"]
    assert e["weights"] == info["tensor_bytes"]
    assert 0.9 * m.stat().st_size < e["weights"] < m.stat().st_size
    assert e["context_length"] == info["context_length"] > 0
    # f16 K and V over the model's whole context (the header's formula)
    head_dim = e["embedding_length"] // e["head_count"]
    kv = e["block_count"] * e["context_length"] * e["head_count_kv"] * 2 * head_dim * 2
    assert e["kv_cache"] == kv > 0
    assert e["overhead"] == (64 << 20) + e["weights"] * 5 // 100
    small = _native.gguf_estimate(str(m), n_ctx=1024)
    assert small["kv_cache"] * e["context_length"] == e["kv_cache"] * 1024
    assert small["weights"] == e["weights"]
    (tmp_path / "junk.gguf").write_bytes(b"not a model" * 10)
    with pytest.raises(ValueError, match="junk.gguf.*not a GGUF"):
        _native.gguf_estimate(tmp_path / "junk.gguf")
    with pytest.raises(FileNotFoundError) as exc:
        _native.gguf_estimate(tmp_path / "missing.gguf")
    assert exc.value.filename == str(tmp_path / "missing.gguf")
