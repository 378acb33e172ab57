"""The example LLM app (examples/llm-app) with its real model (llama.cpp on
the CPU, SmolLM2-135M GGUF), set up by `make test-example-model`
(LLM_APP_MODEL names the model file)."""

import os
import xml.etree.ElementTree as ET

import pytest

from helpers import overlaps
from test_example import run_app

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
