#!/usr/bin/env bash
# The packages as a user gets them (issue #12):
#   1. `make dist`: sdist + manylinux wheel, both through `twine check`;
#   2. the repaired wheel installed into a fresh venv with NO C compiler on
#      PATH (only python, the installed CLI and a few shell tools), and the
#      plugin, API, thread and extension tests run against it from outside
#      the source tree;
#   3. the sdist installed into another fresh venv (with a compiler) and
#      smoke-tested;
#   4. the sdist installed where there is no C compiler: the pure-Python
#      package on the filelock backend, which says so once.
# Needs network access for pip (pytest, meson-python, ... into the venvs).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PYTHON=${PYTHON:-python3}
NICE=$(command -v nice)

make dist
wheel=$(ls "$ROOT"/dist/*-cp310-abi3-manylinux_*.whl)
sdist=$(ls "$ROOT"/dist/*.tar.gz)
echo "== wheel: $(basename "$wheel")"
# A light wheel (issue #16): libpq is loaded at run time, so no TLS stack,
# Kerberos or LDAP rides along; under 1 MB unpacked, and no libpq inside.
unpacked=$("$PYTHON" -c 'import sys, zipfile; print(sum(i.file_size for i in zipfile.ZipFile(sys.argv[1]).infolist()))' "$wheel")
echo "   $(stat -c %s "$wheel") bytes, $unpacked unpacked"
if [ "$unpacked" -ge 1000000 ]; then
  echo "check-wheel: the wheel is $unpacked bytes unpacked; the bound is 1 MB" >&2
  unzip -l "$wheel" >&2
  exit 1
fi
if unzip -l "$wheel" | grep -i 'libpq'; then
  echo "check-wheel: the wheel carries libpq; it must be loaded at run time" >&2
  exit 1
fi

work=$ROOT/build/check-wheel
rm -rf "$work"
mkdir -p "$work"

# ---- 2. the wheel, without a compiler ----
"$PYTHON" -m venv "$work/venv"
V=$work/venv/bin
"$V/python" -m pip install -q --upgrade pip
"$V/python" -m pip install -q pytest pytest-xdist filelock mypy
# A PATH with no cc/gcc/ld: a bin dir holding only what the tests run.
nocc=$work/bin
mkdir -p "$nocc"
# (wrappers, not symlinks: a symlinked venv python would not find its pyvenv.cfg)
for name in python python3; do
  printf '#!/bin/sh\nexec "%s" "$@"\n' "$V/python" > "$nocc/$name"
  chmod +x "$nocc/$name"
done
for tool in sh bash env flock sleep cat true; do
  ln -s "$(command -v "$tool")" "$nocc/$tool"
done
if PATH=$nocc command -v cc gcc clang ld >/dev/null 2>&1; then
  echo "check-wheel: a compiler is reachable on the test PATH" >&2
  exit 1
fi
# --only-binary: pip may not build anything from source here.
PATH=$nocc "$V/python" -m pip install -q --no-index --only-binary=:all: "$wheel"
ln -s "$V/heavylock" "$nocc/heavylock"
# The command is the launcher that execs the binary inside the package (no
# auditwheel shim in the wheel's scripts: it broke --prefix/--user/--target).
PATH=$nocc "$V/heavylock" --version | grep -q "^heavylock from heavylock "
if unzip -l "$wheel" | grep -q '\.scripts/'; then
  echo "check-wheel: the wheel carries an auditwheel script shim" >&2; exit 1
fi
# Run from outside the checkout so that nothing imports the source tree.
cp -r "$ROOT/tests/python" "$work/tests"
cp "$ROOT/pyproject.toml" "$work/pyproject.toml"  # the suite's pytest settings
cd "$work"
PATH=$nocc python - <<'EOF'
import heavylock, heavylock._native as n, sys
assert heavylock.__file__.startswith(sys.prefix), heavylock.__file__
assert n.__file__.endswith("_native.abi3.so"), n.__file__
print("== installed:", heavylock.__file__, "backend", heavylock.available_backend())
EOF
PATH=$nocc HEAVYLOCK_CLI=$V/heavylock "$NICE" python -m pytest -q -p no:cacheprovider \
  tests/test_plugin.py tests/test_api.py tests/test_threads.py tests/test_native.py

# ---- 3. the sdist, with a compiler ----
cd "$ROOT"
"$PYTHON" -m venv "$work/sdist-venv"
S=$work/sdist-venv/bin
"$S/python" -m pip install -q --upgrade pip
nice "$S/python" -m pip install -q "$sdist"
(cd "$work" && "$S/python" - <<'EOF'
import os, sys, tempfile, heavylock, heavylock._native
assert heavylock.__file__.startswith(sys.prefix), heavylock.__file__
p = os.path.join(tempfile.mkdtemp(), "m", ".llm_load.lock")
with heavylock.open_lock(p, timeout=1) as lk:
    assert lk.held and heavylock.status(p)["held"]
print("== sdist install works:", heavylock.__file__)
EOF
)
"$S/heavylock" --version

# ---- 4. the sdist where there is no C compiler: the pure-Python half ----
"$PYTHON" -m venv "$work/nocc-venv"
N=$work/nocc-venv/bin
for name in python python3; do
  printf '#!/bin/sh\nexec "%s" "$@"\n' "$N/python" > "$nocc/$name"
done
rm -f "$nocc/heavylock"
(cd "$work" && PATH=$nocc python -m pip install -q "$sdist" filelock)
(cd "$work" && PATH=$nocc python -W always - <<'EOF' 2>&1 | tee "$work/nocc.out"
import os, sys, tempfile, heavylock
assert heavylock.__file__.startswith(sys.prefix), heavylock.__file__
p = os.path.join(tempfile.mkdtemp(), "m", ".llm_load.lock")
with heavylock.open_lock(p, timeout=1) as lk:
    assert lk.held and lk.name == "filelock", lk
print("== sdist without a compiler works:", lk.name)
EOF
)
grep -q "FallbackWarning: heavylock: the native extension could not be loaded (No module named 'heavylock._native')" \
  "$work/nocc.out"
# No compiler, no CLI binary: the command says so (69), no traceback.
rc=0; PATH=$nocc "$N/heavylock" --version 2> "$work/nocc-cli.err" || rc=$?
[ "$rc" = 69 ] && grep -q "the CLI binary is not installed" "$work/nocc-cli.err" || {
  echo "check-wheel: heavylock without its binary exited $rc:"; cat "$work/nocc-cli.err"; exit 1; } >&2
echo "check-wheel: OK"
