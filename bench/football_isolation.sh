#!/usr/bin/env bash
# Isolation benchmark: the 20 users x 5 messages scenario (b) with and without a full football
# sync on the football worker, whose database work overlaps the measured run: a fake APIFootball
# answering in DELAY (0.15 s) with LEAGUES x FIXTURES (30 leagues, 1 800 fixtures) and 5
# bookmakers each (162 000 prices). The measured run starts when the first odds rows are in, so
# it overlaps the odds upsert (tables emptied before each sync, so every row is written). Alternates quiet and during-sync runs REPS
# times (default 3) and prints the median p99 of each and their ratio (target <= 1.3), how many
# odds rows the sync wrote during each measured run, and the CPU other processes used meanwhile.
#
#   bash bench/football_isolation.sh sqlite
#   bash bench/football_isolation.sh postgres
#
# The fake API runs at nice 19: it stands for a remote server, whose CPU is not ours.
set -euo pipefail
cd "$(dirname "$0")/.."
KIND="${1:-sqlite}"; REPS="${REPS:-3}"; DELAY="${DELAY:-0.15}"
mkdir -p bench/results; OUT="$PWD/bench/results/isolation-$KIND-$(date +%Y%m%d-%H%M%S).jsonl"
API_PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
export APIFOOTBALL_URL=http://127.0.0.1:$API_PORT APIFOOTBALL_KEY=bench-key APIFOOTBALL_RATE_PER_MINUTE=600
# keep the scheduled syncs out of the quiet runs; the bench starts its own
export FOOTBALL_UPCOMING_CRON="0 0 1 1 *" FOOTBALL_RESULTS_CRON="0 0 1 1 *"
API_LOG=/tmp/crm_bench_apifootball.$$.log
nice -n 19 .venv/bin/python bench/fake_apifootball.py --port $API_PORT --leagues "${LEAGUES:-30}" \
  --fixtures "${FIXTURES:-1800}" --bookmakers 5 --delay "$DELAY" >"$API_LOG" 2>&1 &
EXTRA_PIDS=$!
source bench/_stack.sh
B="-c 20 -m 5 --concurrency 20 --warmup 5 --timeout 60"
sync_running() { python3 - <<'PY'
import os, sys, redis
from crm.base import keys
sys.exit(0 if redis.Redis.from_url(os.environ["REDIS_URL"]).exists(keys.sync_lock("full")) else 1)
PY
}
football_sql() { python3 - "$1" <<'PY'
import os, sys
from sqlalchemy import create_engine, text
url = os.environ["DATABASE_URL"].replace("postgresql://", "postgresql+psycopg://")
with create_engine(url).begin() as conn:
    for statement in sys.argv[1].split(";"):
        result = conn.execute(text(statement))
    if result.returns_rows:
        print(result.scalar())
PY
}
CLEAR="DELETE FROM football_odds; DELETE FROM football_fixtures; DELETE FROM football_teams; DELETE FROM football_leagues"
for rep in $(seq "$REPS"); do
  football_sql "$CLEAR" >/dev/null  # every sync inserts everything again
  sleep 1
  measure "$KIND quiet b" "$T" $B
  started=$(date +%s.%N)
  flask --app wsgi football sync >/dev/null
  # the measured run starts once the odds upsert (162 000 rows, the bulk of the writes) has begun
  until [ "$(football_sql "SELECT count(*) FROM football_odds")" -gt 0 ]; do sleep 0.2; done
  before=$(football_sql "SELECT count(*) FROM football_odds")
  measure "$KIND during sync b" "$T" $B
  after=$(football_sql "SELECT count(*) FROM football_odds")
  if sync_running; then overlap=yes; else overlap="NO (the sync ended first)"; fi
  while sync_running; do sleep 0.5; done
  echo "rep $rep: sync took $(python3 -c "import time; print(round(time.time() - $started, 1))") s;" \
       "odds rows written during the measured run: $((after - before)); still running when it ended: $overlap"
  sleep 2
done
python3 "$W" --summarize "$OUT"
python3 - "$OUT" "$KIND" <<'PY'
import json, statistics, sys
runs = [json.loads(line) for line in open(sys.argv[1])]
def pick(label):
    return [r for r in runs if r["label"] == f"{sys.argv[2]} {label}"]
for key in ("p50", "p99"):
    quiet = statistics.median(r["latency_ms"][key] for r in pick("quiet b"))
    busy = statistics.median(r["latency_ms"][key] for r in pick("during sync b"))
    goal = " (target <= 1.3)" if key == "p99" else ""
    print(f"b {key}: quiet {quiet:.1f} ms, during sync {busy:.1f} ms, ratio {busy / quiet:.2f}{goal}")
for label in ("quiet b", "during sync b"):
    print(f"  {label}: p99 per run " + ", ".join(f"{r['latency_ms']['p99']:.0f}" for r in pick(label))
          + " ms; foreign CPU % " + ", ".join(str(r["foreign_cpu_pct"]) for r in pick(label))
          + "; football worker CPU ms/reply " + ", ".join(str(r["cpu_ms_per_reply"].get("football", 0)) for r in pick(label)))
PY
flask --app wsgi football status
echo "raw results: $OUT"
