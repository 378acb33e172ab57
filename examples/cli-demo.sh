#!/usr/bin/env bash
# Two processes contend for one lock through the CLI; `status` shows the
# holder and the waiter while the second one waits.
set -euo pipefail
HL=${1:-heavylock}
dir=$(mktemp -d)
lock=$dir/models/.llm_load.lock
trap 'rm -rf "$dir"' EXIT
mkdir -p "$dir/models" # an explicit --lock into a missing directory is refused (66)

echo "== lock path policy (no variables set): "
(cd "$dir" && "$HL" path)
echo
echo "== process A loads a 'model' for 2 s under the lock"
"$HL" run --lock "$lock" --label "A: load phi-3" -- sh -c 'echo "   A: got the lock at $(date +%T.%N | cut -c1-12)"; sleep 2; echo "   A: done at $(date +%T.%N | cut -c1-12)"' &
sleep 0.3
echo "== process B wants it too (verbose: says who holds it)"
"$HL" run --lock "$lock" --label "B: load llama" --verbose -- sh -c 'echo "   B: got the lock at $(date +%T.%N | cut -c1-12)"' &
sleep 0.3
echo "== heavylock status while B waits"
"$HL" status --lock "$lock" || true
wait
echo
echo "== after both: "
"$HL" status --lock "$lock"
