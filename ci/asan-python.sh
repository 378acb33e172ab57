#!/usr/bin/env bash
# The extension under AddressSanitizer + UBSan: build _native with
# -Db_sanitize=address,undefined, put it beside the package's Python files,
# preload libasan into the interpreter and run the thread and extension
# tests ROUNDS times (default 20): a use-after-free or a race that corrupts
# the handle shows up as an ASan report and a failed run.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-20}
export PATH=$PWD/.venv/bin:$PATH
B=build/asan-py
test -f $B/build.ninja || meson setup $B -Dpython=enabled -Dtests=false \
  -Db_sanitize=address,undefined -Db_lundef=false --buildtype=debug >/dev/null
nice ninja -C $B _native.abi3.so >/dev/null
rm -rf $B/pkg && mkdir -p $B/pkg/heavylock
cp python/heavylock/*.py python/heavylock/py.typed $B/pkg/heavylock/
cp $B/_native.abi3.so $B/pkg/heavylock/
cc=${CC:-cc}
export LD_PRELOAD="$($cc -print-file-name=libasan.so) $($cc -print-file-name=libubsan.so)"
export ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
export PYTHONPATH=$PWD/$B/pkg
python -c "import heavylock._native as n, sys; assert '/asan-py/' in n.__file__, n.__file__"
for i in $(seq 1 "$ROUNDS"); do
  nice python -m pytest -q -p no:cacheprovider tests/python/test_threads.py \
    tests/python/test_native.py >$B/last.log 2>&1 || { cat $B/last.log; echo "asan-python: round $i failed"; exit 1; }
done
echo "asan-python: $ROUNDS rounds clean"
