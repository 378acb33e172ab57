import os
import time

import pytest

from llm_app import LocalLLMClient, LocalLLMProvider


def record_load(t0, t1):
    """Model-load intervals, for the proof that loads never overlapped."""
    log = os.environ.get("LLM_APP_LOAD_LOG")
    if log:
        with open(log, "a") as f:
            f.write(f"{os.getpid()} {t0!r} {t1!r}\n")


@pytest.fixture
def model_file(request):
    """The model to load: heavylock's validated local_model_path when the
    plugin is active; the bare variable when it is not (the comparison run
    with -p no:heavylock)."""
    if request.config.pluginmanager.has_plugin("heavylock"):
        return str(request.getfixturevalue("local_model_path"))
    path = os.environ.get("LOCAL_MODEL_PATH")
    if not path or os.environ.get("RUN_HEAVY_INTEGRATION", "").lower() not in ("1", "true", "yes"):
        pytest.skip("set LOCAL_MODEL_PATH and RUN_HEAVY_INTEGRATION=1")
    return path


@pytest.fixture
def provider(model_file):
    t0 = time.time()
    p = LocalLLMProvider(model_file)
    yield p
    p.close()
    record_load(t0, time.time())


@pytest.fixture
def llm_client(provider):
    # heavy by the token heuristic: this fixture builds a LocalLLMClient
    return LocalLLMClient(provider)
