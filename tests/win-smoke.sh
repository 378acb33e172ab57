#!/usr/bin/env bash
# The Windows build under wine: the whole API once, then two processes: while
# one holds the lock (LockFileEx), the other's try-once must find it busy.
set -euo pipefail
exe=$1
lock=$(dirname "$exe")/smoke.lock
export WINEDEBUG=-all
wine() { "${WINE:-wine}" "$@"; }
wine "$exe" "$lock"
wine "$exe" "$lock" hold 4 &
holder=$!
for _ in $(seq 100); do  # wait until the holder says it holds
  sleep 0.1
  rc=0; wine "$exe" "$lock" try >/dev/null || rc=$?
  [ "$rc" = 3 ] && break
done
[ "$rc" = 3 ] || { echo "win-smoke: second process was not excluded (exit $rc)"; exit 1; }
echo "win-smoke: a second process is excluded while the first holds the lock"
wait "$holder"
wine "$exe" "$lock" try
echo "win-smoke: free again after the holder exited"
