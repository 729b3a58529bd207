#!/usr/bin/env bash
# End-to-end reply benchmark: the Procfile exactly as shipped (web, worker, football, scheduler,
# each sized from the machine) against wabench's fake Graph API, and wabench's echo bot (the
# harness floor) measured in the same run. Scenarios interleaved REPS times (default 3);
# prints medians, stack/echo ratios against the issue's targets, and per run the CPU other
# processes on the host used meanwhile (foreign) and the load average.
#
#   bash bench/reply_bench.sh sqlite
#   bash bench/reply_bench.sh postgres     # a scratch database crm_bench_<pid> on 127.0.0.1:5432, dropped after
set -euo pipefail
cd "$(dirname "$0")/.."
KIND="${1:-sqlite}"; REPS="${REPS:-3}"
mkdir -p bench/results; OUT="$PWD/bench/results/reply-$KIND-$(date +%Y%m%d-%H%M%S).jsonl"
source bench/_stack.sh
for rep in $(seq "$REPS"); do
  echo "rep $rep"
  for who in echo "$KIND"; do
    t=$T; [ "$who" = echo ] && t=$ECHO_T
    measure "$who a2 1x20 seq" "$t" -c 1 -m 20 --warmup 3 --timeout 60
    measure "$who b 20x5 conv" "$t" -c 20 -m 5 --concurrency 20 --warmup 5 --timeout 60
    measure "$who c burst 200" "$t" --mode burst -c 50 -m 4 --concurrency 50 --warmup 5 --timeout 180
    measure "$who d menu+button" "$t" -c 20 -m 2 --script "text:menu|button:auto" --warmup 5 --timeout 60
    measure "$who cpu 20x20 conv" "$t" -c 20 -m 20 --concurrency 20 --warmup 5 --timeout 60
    sleep 2
  done
  measure "$KIND f two messages" "$T" -c 10 -m 1 --script "text:two" --expect 2 --warmup 2 --timeout 60
  measure "$KIND e 25% graph errors" "$T" -c 20 -m 1 --graph-error-rate 0.25 --seed 7 --settle 75
done
python3 "$W" --summarize "$OUT"
python3 bench/ratios.py "$OUT" "$KIND" || true
python3 bench/procs.py memory $$
echo "raw results: $OUT"
