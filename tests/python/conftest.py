import os
import shutil

import pytest

pytest_plugins = ["pytester"]


@pytest.fixture(scope="session")
def cli():
    """The heavylock command under test (the C build, or the installed one)."""
    path = os.environ.get("HEAVYLOCK_CLI") or shutil.which("heavylock")
    if not path or not os.access(path, os.X_OK):
        pytest.fail("heavylock CLI not found: build it (make build) or set HEAVYLOCK_CLI")
    return path


@pytest.fixture
def lockfile(tmp_path):
    return tmp_path / "models" / ".llm_load.lock"


