#!/usr/bin/env bash
# CPU time per reply, split by process (web, reply workers, football worker, scheduler, Redis,
# database, honcho's log relay), read from /proc around 20 users x 20 messages, next to the
# echo bot's CPU per reply for the same run, REPS times (default 3), medians and ratio.
#
#   bash bench/cpu_split.sh sqlite        # or postgres
set -euo pipefail
cd "$(dirname "$0")/.."
KIND="${1:-sqlite}"; REPS="${REPS:-3}"
mkdir -p bench/results; OUT="$PWD/bench/results/cpu-$KIND-$(date +%Y%m%d-%H%M%S).jsonl"
source bench/_stack.sh
measure "warm" "$T" -c 20 -m 3 --concurrency 20 --timeout 60
for rep in $(seq "$REPS"); do
  measure "echo cpu 20x20 conv" "$ECHO_T" -c 20 -m 20 --concurrency 20 --timeout 60
  measure "$KIND cpu 20x20 conv" "$T" -c 20 -m 20 --concurrency 20 --timeout 60
  sleep 2
done
python3 bench/ratios.py "$OUT" "$KIND" || true
python3 bench/procs.py memory $$
echo "raw results: $OUT"
