"""The client with the model mocked.  These name LocalLLMClient, so the seed's
token heuristic serializes them; they are quick all the same."""

import pytest

from llm_app import LocalLLMClient


class FakeProvider:
    def __init__(self):
        self.prompts = []

    def complete(self, prompt, max_tokens=8):
        self.prompts.append(prompt)
        return "  Paris. "


def test_reply_strips_and_uses_chatml():
    fake = FakeProvider()
    assert LocalLLMClient(fake).reply("Capital of France?") == "Paris."
    assert "<|im_start|>user\nCapital of France?<|im_end|>" in fake.prompts[0]


def test_empty_message_refused():
    with pytest.raises(ValueError):
        LocalLLMClient(FakeProvider()).reply("  ")
