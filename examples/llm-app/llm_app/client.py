"""LocalLLMProvider loads the model; LocalLLMClient talks to it.

Configured by LOCAL_MODEL_PATH (the .gguf file) and USE_LOCAL_LLM (1/true/yes
to use the local model at all).
"""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass
class Settings:
    model_path: str | None
    use_local: bool
    n_ctx: int = 256
    n_threads: int = 1


def settings_from_env(env=os.environ) -> Settings:
    use = env.get("USE_LOCAL_LLM", "").strip().lower()
    if use not in ("", "0", "1", "true", "false", "yes", "no"):
        raise ValueError(f"USE_LOCAL_LLM={use!r}: expected 1/true/yes or 0/false/no")
    return Settings(model_path=env.get("LOCAL_MODEL_PATH") or None,
                    use_local=use in ("1", "true", "yes"))


def build_prompt(system: str, user: str) -> str:
    """ChatML, as SmolLM2-Instruct expects."""
    return (f"<|im_start|>system\n{system}<|im_end|>\n"
            f"<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n")


class LocalLLMProvider:
    """Owns the loaded model (llama.cpp through llama-cpp-python)."""

    def __init__(self, model_path: str, n_ctx: int = 256, n_threads: int = 1):
        from llama_cpp import Llama  # heavy import, only when a model is loaded

        if not os.path.isfile(model_path):
            raise FileNotFoundError(f"model file not found: {model_path}")
        self.model_path = model_path
        self._llm = Llama(model_path=model_path, n_ctx=n_ctx, n_threads=n_threads,
                          verbose=False)

    def complete(self, prompt: str, max_tokens: int = 8) -> str:
        out = self._llm(prompt, max_tokens=max_tokens, temperature=0.0, stop=["<|im_end|>"])
        return out["choices"][0]["text"]

    def close(self) -> None:
        if self._llm is not None:
            self._llm.close()
            self._llm = None


class LocalLLMClient:
    """The application's chat client."""

    def __init__(self, provider, system: str = "You are a helpful assistant."):
        self.provider = provider
        self.system = system

    def reply(self, message: str, max_tokens: int = 8) -> str:
        if not message.strip():
            raise ValueError("empty message")
        return self.provider.complete(build_prompt(self.system, message), max_tokens).strip()
