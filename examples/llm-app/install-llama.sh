#!/usr/bin/env bash
# Installs llama-cpp-python (llama.cpp for the example app) into a venv from
# a wheel built here, once per version and build variant, kept in WHEEL_DIR
# (outside pip's cache: a wheel pip cached, ours or another project's, built
# with other flags, is never picked up).
#
#   install-llama.sh PYTHON WHEEL_DIR portable|native
#
# portable (the default of `make demo` / `make test`): no -march=native.  On
# x86-64 the AVX2/FMA/F16C baseline (with AVX and BMI2; no AVX-512, no AMX:
# a VM may advertise AMX and fault on it, and llama.cpp's native build then
# dies with SIGSEGV in ggml_backend_amx_mul_mat).  Elsewhere the platform's
# default with GGML_NATIVE=OFF.
# native: llama.cpp's own default, tuned to this CPU (-march=native).
#
# The version is constraints.txt's llama-cpp-python pin; its dependencies
# come from the index under the same constraints.  Two makes building the
# same WHEEL_DIR at once build it once (flock on WHEEL_DIR.lock).
set -euo pipefail
py=$1 dir=$2 build=$3
here=$(cd "$(dirname "$0")" && pwd)
constraints=$here/constraints.txt
version=$(sed -n 's/^llama-cpp-python==//p' "$constraints")
[ -n "$version" ] || { echo "$constraints: no llama-cpp-python==VERSION line" >&2; exit 2; }

case $build in
  portable)
    case $(uname -m) in
      x86_64|amd64)
        cmake_args="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON"
        cmake_args+=" -DGGML_BMI2=ON -DGGML_AVX512=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF"
        cmake_args+=" -DGGML_AMX_BF16=OFF" ;;
      *) cmake_args="-DGGML_NATIVE=OFF" ;;
    esac ;;
  native) cmake_args="-DGGML_NATIVE=ON" ;;
  *) echo "LLAMA_BUILD=$build: expected portable or native" >&2; exit 2 ;;
esac

mkdir -p "$(dirname "$dir")"
exec 9>>"$dir.lock"
flock 9
# The flags the wheel was built with are kept beside it: a wheel built with
# other flags (an older version of this script) is rebuilt, not reused.
wheel=$(ls "$dir"/llama_cpp_python-"$version"-*.whl 2>/dev/null | head -n1 || true)
if [ -z "$wheel" ] || [ "$(cat "$dir/CMAKE_ARGS" 2>/dev/null)" != "$cmake_args" ]; then
  echo "== building llama.cpp (llama-cpp-python $version, $build: $cmake_args)"
  echo "   into $dir: once per version and variant, 15-20 minutes on 2 cores"
  tmp=$(mktemp -d "$dir.tmp.XXXXXX")
  if ! CMAKE_ARGS="$cmake_args" "$py" -m pip wheel -q --no-cache-dir --no-deps \
      --no-binary llama-cpp-python -w "$tmp" "llama-cpp-python==$version"; then
    rm -rf "$tmp"
    echo "building llama-cpp-python $version failed (see above); nothing was installed" >&2
    exit 1
  fi
  printf '%s\n' "$cmake_args" >"$tmp/CMAKE_ARGS"
  rm -rf "$dir"
  mv "$tmp" "$dir"
  wheel=$(ls "$dir"/llama_cpp_python-"$version"-*.whl | head -n1)
else
  echo "== llama.cpp: reusing $wheel ($build)"
fi

"$py" -m pip install -q -c "$constraints" -r "$here/requirements.txt"
"$py" -m pip install -q --no-index --no-deps --force-reinstall --find-links "$dir" \
  "llama-cpp-python==$version"
"$py" -m pip check
