#!/usr/bin/env bash
# Replies while operators' inbox pages poll: scenario b (20 users x 5 messages) on the Procfile as
# shipped, alternately with no inbox open and with 5 operators' pages polling /inbox/poll every
# 3 s (bench/inbox_poller.py signs in like a browser). REPS times each (default 3), medians.
#
#   bash bench/inbox_polling.sh sqlite
set -euo pipefail
cd "$(dirname "$0")/.."
KIND="${1:-sqlite}"; REPS="${REPS:-3}"
mkdir -p bench/results; OUT="$PWD/bench/results/inbox-polling-$KIND-$(date +%Y%m%d-%H%M%S).jsonl"
export SESSION_COOKIE_SECURE=0 SECRET_KEY=bench-secret-key-of-at-least-32-characters
source bench/_stack.sh
BASE="${T%/webhooks/whatsapp}"
printf 'bench-password\n' | flask --app wsgi operators create bench-op --role agent >/dev/null
POLLERS=()
for rep in $(seq "$REPS"); do
  echo "rep $rep"
  measure "$KIND b 20x5 no inbox" "$T" -c 20 -m 5 --concurrency 20 --warmup 5 --timeout 60
  for _ in 1 2 3 4 5; do
    python3 bench/inbox_poller.py "$BASE" bench-op bench-password --every 3 & POLLERS+=($!)
  done
  sleep 4
  measure "$KIND b 20x5 5 inboxes polling" "$T" -c 20 -m 5 --concurrency 20 --warmup 5 --timeout 60
  kill "${POLLERS[@]}" 2>/dev/null || true; wait "${POLLERS[@]}" 2>/dev/null || true; POLLERS=()
  sleep 2
done
python3 "$W" --summarize "$OUT"
echo "raw results: $OUT"
