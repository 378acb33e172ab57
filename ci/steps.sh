# Sourced by .ci/run: run CI steps one after another, every one of them even
# when an earlier one failed, and end with one table.
#
#   step NAME COMMAND [ARG...]   runs COMMAND, records its result and seconds
#   steps_report                 prints the table; returns 1 if any failed
#
# A step's failure never stops the run: one failure must not hide the others.

STEP_NAMES=() STEP_RESULTS=() STEP_SECONDS=()

step() {
  local name=$1 rc t0 t1
  shift
  printf '\n===== CI step: %s\n' "$name"
  t0=$(date +%s.%N)
  "$@"
  rc=$?
  t1=$(date +%s.%N)
  STEP_NAMES+=("$name")
  if [ "$rc" -eq 0 ]; then STEP_RESULTS+=(passed); else STEP_RESULTS+=("FAILED (exit $rc)"); fi
  STEP_SECONDS+=("$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.0f", b - a }')")
  return 0
}

steps_report() {
  local i failed=0 total=0 w=4
  for i in "${!STEP_NAMES[@]}"; do
    [ "${#STEP_NAMES[$i]}" -gt "$w" ] && w=${#STEP_NAMES[$i]}
  done
  printf '\n===== CI summary\n'
  printf '%-*s  %-16s  %8s\n' "$w" step result seconds
  for i in "${!STEP_NAMES[@]}"; do
    printf '%-*s  %-16s  %8s\n' "$w" "${STEP_NAMES[$i]}" "${STEP_RESULTS[$i]}" "${STEP_SECONDS[$i]}"
    [ "${STEP_RESULTS[$i]}" = passed ] || failed=$((failed + 1))
    total=$((total + STEP_SECONDS[i]))
  done
  printf '%-*s  %-16s  %8s\n' "$w" total "$failed failed" "$total"
  [ "$failed" -eq 0 ]
}
