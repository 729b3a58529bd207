#!/usr/bin/env bash
# Isolation benchmark (issue #7): the 20 users x 5 messages scenario with and without a full
# football sync running on the `low` worker against a slow fake APIFootball (2 000 fixtures,
# 5 bookmakers each: 180 000 prices, every answer delayed DELAY seconds). Alternates quiet and
# during-sync runs REPS times and prints the median p99 of each and their ratio (target <= 1.3).
#
#   bash bench/football_isolation.sh sqlite
#   bash bench/football_isolation.sh postgres
set -euo pipefail
cd "$(dirname "$0")/.."
KIND="${1:-sqlite}"; REPS="${REPS:-3}"; DELAY="${DELAY:-2}"
W="${WABENCH:-../shared/tools/wabench.py}"
OUT="bench/results/isolation-$KIND-$(date +%Y%m%d-%H%M%S).jsonl"; mkdir -p bench/results
export APIFOOTBALL_URL=http://127.0.0.1:18998 APIFOOTBALL_KEY=bench-key APIFOOTBALL_RATE_PER_MINUTE=600
# keep the scheduled syncs out of the quiet runs; the bench starts its own
export FOOTBALL_UPCOMING_CRON="0 0 1 1 *" FOOTBALL_RESULTS_CRON="0 0 1 1 *"
.venv/bin/python bench/fake_apifootball.py --port 18998 --fixtures "${FIXTURES:-2000}" --bookmakers 5 \
  --delay "$DELAY" >/tmp/crm_bench_apifootball.log 2>&1 &
EXTRA_PIDS=$!
source bench/_stack.sh
C="--target $T --app-secret bench-secret --graph-token bench-token --json-out $OUT -c 20 -m 5 --concurrency 20"
sync_running() { python - <<'PY'
import os, redis, sys
sys.exit(0 if redis.Redis.from_url(os.environ["REDIS_URL"]).exists("football:sync-lock:full") else 1)
PY
}
for rep in $(seq "$REPS"); do
  python3 "$W" $C --warmup 5 --timeout 60 --label "$KIND quiet" >/dev/null || true
  started=$(date +%s.%N)
  flask --app wsgi football sync >/dev/null
  for _ in $(seq 50); do sync_running && break; sleep 0.1; done
  sleep "$DELAY"  # past the league call: the measured run overlaps the events/odds upserts
  python3 "$W" $C --warmup 5 --timeout 60 --label "$KIND during sync" >/dev/null || true
  if sync_running; then overlap=yes; else overlap="NO (sync ended first)"; fi
  while sync_running; do sleep 0.5; done
  echo "rep $rep: sync took $(python3 -c "import time; print(round(time.time() - $started, 1))") s;" \
       "still running when the measured run ended: $overlap"
  sleep 2
done
python3 "$W" --summarize "$OUT"
python3 - "$OUT" "$KIND" <<'PY'
import json, statistics, sys
runs = [json.loads(line) for line in open(sys.argv[1])]
def med(label, key):
    return statistics.median(r["latency_ms"][key] for r in runs if r["label"] == f"{sys.argv[2]} {label}")
for key in ("p50", "p99"):
    quiet, busy = med("quiet", key), med("during sync", key)
    print(f"{key}: quiet {quiet:.1f} ms, during sync {busy:.1f} ms, ratio {busy / quiet:.2f}")
PY
flask --app wsgi football status
echo "raw results: $OUT"
