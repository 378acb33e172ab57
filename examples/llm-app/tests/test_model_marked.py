"""Real model tests, marked explicitly."""

import pytest


@pytest.mark.llm
@pytest.mark.parametrize("question", ["What is the capital of France?", "Say hello."])
def test_model_answers(provider, question):
    from llm_app import build_prompt

    text = provider.complete(build_prompt("Answer briefly.", question), max_tokens=6)
    assert isinstance(text, str) and text.strip()
