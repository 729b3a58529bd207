#!/usr/bin/env bash
# Replies when the Graph API is slow, as Meta's is from a real deployment (each call answered
# after GRAPH_LATENCY_MS, default 100): the Procfile exactly as shipped against wabench's echo
# bot (which replies from 4 threads), scenarios b (20 users x 5, conversational) and c (burst
# of 200), REPS times (default 3), medians. Here the number of turns a reply process has under
# way at once (WORKER_PROCESSES x WORKER_THREADS) sets the pace, not the CPU.
#
#   bash bench/graph_latency.sh sqlite
#   WORKER_THREADS=8 bash bench/graph_latency.sh sqlite      # any sizing override applies
set -euo pipefail
cd "$(dirname "$0")/.."
KIND="${1:-sqlite}"; REPS="${REPS:-3}"; LAT="${GRAPH_LATENCY_MS:-100}"
mkdir -p bench/results; OUT="$PWD/bench/results/graph-latency-$KIND-$(date +%Y%m%d-%H%M%S).jsonl"
source bench/_stack.sh
measure "warm" "$T" -c 20 -m 3 --concurrency 20 --timeout 60
for rep in $(seq "$REPS"); do
  echo "rep $rep"
  measure "echo b 20x5 conv, graph ${LAT} ms" "$ECHO_T" -c 20 -m 5 --concurrency 20 --graph-latency-ms "$LAT" --timeout 120
  measure "$KIND b 20x5 conv, graph ${LAT} ms" "$T" -c 20 -m 5 --concurrency 20 --graph-latency-ms "$LAT" --timeout 120
  measure "echo c burst 200, graph ${LAT} ms" "$ECHO_T" --mode burst -c 50 -m 4 --concurrency 50 --graph-latency-ms "$LAT" --timeout 300
  measure "$KIND c burst 200, graph ${LAT} ms" "$T" --mode burst -c 50 -m 4 --concurrency 50 --graph-latency-ms "$LAT" --timeout 300
done
python3 "$W" --summarize "$OUT"
echo "raw results: $OUT"
