"""One real inference right after llama-cpp-python is installed: the
example's model, the chat-format prompt its tests send, in a child process.
When llama.cpp cannot run on this CPU (a wheel built for instructions the
machine advertises but faults on), this stops the set-up with the signal,
the library and the remedy, instead of five dead xdist workers later.

Usage: python smoke.py MODEL.gguf --wheel-dir DIR --build portable|native
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))

# The child: what the example's heavy tests do (LocalLLMProvider, ChatML).
CHILD = """
import sys
sys.path.insert(0, sys.argv[1])
from llm_app.client import LocalLLMClient, LocalLLMProvider
provider = LocalLLMProvider(sys.argv[2])
print(repr(LocalLLMClient(provider).reply("Say hello.", max_tokens=4)))
provider.close()
"""


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--wheel-dir", required=True)
    ap.add_argument("--build", required=True)
    a = ap.parse_args()
    try:
        p = subprocess.run([sys.executable, "-X", "faulthandler", "-c", CHILD, HERE, a.model],
                           capture_output=True, text=True, timeout=600)
    except subprocess.TimeoutExpired:
        sys.exit(f"smoke inference: no answer from llama.cpp in 600 s ({a.model})")
    if p.returncode == 0:
        print(f"== smoke inference ({a.build} llama.cpp): {p.stdout.strip()}")
        return
    tail = "\n".join("   " + ln for ln in (p.stderr.strip().splitlines() or ["(no output)"])[-12:])
    if p.returncode < 0:
        sig = -p.returncode
        try:
            name = f"{signal.Signals(sig).name} ({signal.strsignal(sig)})"
        except ValueError:
            name = f"signal {sig}"
        other = "native" if a.build == "portable" else "portable"
        sys.exit(
            f"smoke inference failed: the process running one inference through llama.cpp "
            f"(llama-cpp-python, its CPU backend libggml-cpu.so) died by {name}.\n{tail}\n"
            f"The llama.cpp wheel in use was built '{a.build}' ({a.wheel_dir}); its CPU code "
            "may use instructions this machine advertises but cannot run (AMX or AVX-512 "
            "under a VM).\n"
            f"Remedy: rebuild it (rm -rf {a.wheel_dir}, then make again), or use the other "
            f"build: make ... LLAMA_BUILD={other} (see README, \"llama.cpp builds\").")
    sys.exit(f"smoke inference failed (exit status {p.returncode}) with {a.model}:\n{tail}")


if __name__ == "__main__":
    main()
