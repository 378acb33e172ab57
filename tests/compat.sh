#!/usr/bin/env bash
# Run the plugin's suite against the oldest and newest supported pytest and
# pytest-xdist, each in its own venv (the heavy lane's verdicts must reach
# xdist's controller on both).  Usage: tests/compat.sh [oldest|newest]...
set -euo pipefail
cd "$(dirname "$0")/.."
make build >/dev/null
sets=("$@")
[ ${#sets[@]} -gt 0 ] || sets=(oldest newest)
for which in "${sets[@]}"; do
  case $which in
    oldest) pins=("pytest==7.4.0" "pytest-xdist==3.0.2") ;;
    newest) pins=("pytest" "pytest-xdist") ;;
    *) echo "compat.sh: unknown set '$which' (oldest or newest)" >&2; exit 64 ;;
  esac
  venv=build/compat-$which
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q meson meson-python ninja filelock pytest-timeout "${pins[@]}"
  PATH=$PWD/$venv/bin:$PATH "$venv/bin/pip" install -q --no-build-isolation --no-deps .
  echo "== $which: $("$venv/bin/python" -m pytest --version 2>&1)"
  HEAVYLOCK_CLI=$PWD/build/c/heavylock \
  LLM_APP_MODEL=$PWD/examples/llm-app/models/SmolLM2-135M-Instruct.Q4_1.gguf \
    "$venv/bin/python" -m pytest -q -p no:cacheprovider \
    tests/python/test_plugin.py tests/python/test_plugin_*.py tests/python/test_native.py \
    tests/python/test_lane.py
done
