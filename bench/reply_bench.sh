#!/usr/bin/env bash
# End-to-end reply benchmark with the team's wabench (signed webhooks in, fake Graph API out).
# Starts the whole system (gunicorn, 2 reply workers, football worker, scheduler) on the given
# database, runs the reference scenarios 3 times (interleaved), prints medians.
#
#   bash bench/reply_bench.sh sqlite
#   bash bench/reply_bench.sh postgres     # uses postgresql://postgres@127.0.0.1:5432/crm_bench
set -euo pipefail
cd "$(dirname "$0")/.."
KIND="${1:-sqlite}"; REPS="${REPS:-3}"
W="${WABENCH:-../shared/tools/wabench.py}"
OUT="bench/results/reply-$KIND-$(date +%Y%m%d-%H%M%S).jsonl"; mkdir -p bench/results
source bench/_stack.sh
C="--target $T --app-secret bench-secret --graph-token bench-token --json-out $OUT"
for rep in $(seq "$REPS"); do
  python3 "$W" $C -c 1 -m 20 --warmup 3 --timeout 60 --label "$KIND a2 1x20 seq" >/dev/null || true
  python3 "$W" $C -c 20 -m 5 --concurrency 20 --warmup 5 --timeout 60 --label "$KIND b 20x5 conv" >/dev/null || true
  python3 "$W" $C --mode burst -c 50 -m 4 --concurrency 50 --warmup 5 --timeout 180 --label "$KIND c burst 200" >/dev/null || true
  python3 "$W" $C -c 20 -m 2 --script "text:menu|button:auto" --warmup 5 --timeout 60 --label "$KIND d menu+button" >/dev/null || true
  python3 "$W" $C -c 10 -m 1 --script "text:two" --expect 2 --warmup 2 --timeout 60 --label "$KIND f two messages" >/dev/null || true
  python3 "$W" $C -c 20 -m 1 --graph-error-rate 0.25 --seed 7 --settle 75 --label "$KIND e 25% graph errors" >/dev/null || true
  sleep 2
done
python3 "$W" --summarize "$OUT"
echo "raw results: $OUT"
