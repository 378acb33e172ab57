"""A small application of the kind the seed policy was written for: a chat
client over a local GGUF model run by llama.cpp on the CPU."""

from llm_app.client import LocalLLMClient, LocalLLMProvider, build_prompt, settings_from_env

__all__ = ["LocalLLMClient", "LocalLLMProvider", "build_prompt", "settings_from_env"]
