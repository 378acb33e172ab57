"""Fast tests: no model is loaded (the default run)."""

import pytest

from llm_app import build_prompt, settings_from_env


def test_prompt_is_chatml():
    p = build_prompt("sys", "hi")
    assert p.startswith("<|im_start|>system\nsys<|im_end|>")
    assert p.endswith("<|im_start|>assistant\n")


@pytest.mark.parametrize("value,expected", [("1", True), ("yes", True), ("0", False), ("", False)])
def test_settings_from_env(value, expected):
    s = settings_from_env({"USE_LOCAL_LLM": value, "LOCAL_MODEL_PATH": "m.gguf"})
    assert s.use_local is expected and s.model_path == "m.gguf"


def test_settings_reject_typos():
    with pytest.raises(ValueError, match="USE_LOCAL_LLM='ture'"):
        settings_from_env({"USE_LOCAL_LLM": "ture"})
