#!/usr/bin/env bash
# Build the libFuzzer harnesses with clang (ASan + UBSan) and run each for
# FUZZ_SECONDS (default 20); print executions and crashes per harness.
# Usage: fuzz/run.sh [SECONDS] [harness...]     (make fuzz FUZZ_SECONDS=600)
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-${FUZZ_SECONDS:-20}}
shift || true
names=("$@")
[ ${#names[@]} -gt 0 ] || names=(gguf record path redact)
CLANG=${CLANG:-$(command -v clang || ls /usr/bin/clang-[0-9]* 2>/dev/null | sort -V | tail -1)}
[ -n "$CLANG" ] || { echo "fuzz: clang not found (apt-get install clang libclang-rt-dev)" >&2; exit 2; }
out=build/fuzz
mkdir -p "$out"
# The library as meson builds it on Linux (the PostgreSQL kind too: libpq
# is loaded at run time, only for a URL, so it costs nothing here).
lib=(src/lock.c src/kind.c src/path.c src/gguf.c src/utf8.c src/redact.c src/admit.c
     src/os-unix.c src/proc-linux.c src/kind-slots.c src/kind-pg.c src/pq.c)
flags=(-g -O1 -fno-omit-frame-pointer -fsanitize=fuzzer,address,undefined
       -fno-sanitize-recover=undefined -DHL_HAVE_SLOTS -DHL_HAVE_PG -Iinclude -Isrc -pthread)
status=0
printf '%-8s %12s %10s %8s %s\n' harness executions exec/s crashes "corpus"
for n in "${names[@]}"; do
  "$CLANG" "${flags[@]}" "fuzz/fuzz_$n.c" "${lib[@]}" -o "$out/fuzz_$n" -lm -ldl
  rm -rf "$out/crashes-$n"
  mkdir -p "$out/corpus-$n" "$out/crashes-$n"
  cp -n fuzz/corpus/"$n"/* "$out/corpus-$n/" 2>/dev/null || true
  log="$out/fuzz_$n.log"
  set +e
  UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
    "$out/fuzz_$n" -max_total_time="$secs" -print_final_stats=1 -timeout=10 \
    -rss_limit_mb=1024 -artifact_prefix="$out/crashes-$n/" "$out/corpus-$n" >"$log" 2>&1
  rc=$?
  set -e
  execs=$(awk '/stat::number_of_executed_units/ {print $2}' "$log" | tail -1)
  rate=$(awk '/stat::average_exec_per_sec/ {print $2}' "$log" | tail -1)
  crashes=$(find "$out/crashes-$n" -type f | wc -l)
  printf '%-8s %12s %10s %8s %s\n' "$n" "${execs:-?}" "${rate:-?}" "$crashes" \
    "$(ls "$out/corpus-$n" | wc -l) inputs"
  if [ $rc -ne 0 ] || [ "$crashes" -ne 0 ]; then
    status=1
    echo "fuzz_$n failed (exit $rc); see $log and $out/crashes-$n/" >&2
    tail -30 "$log" >&2
  fi
done
exit $status
