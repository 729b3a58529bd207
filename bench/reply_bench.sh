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
export PATH="$PWD/.venv/bin:$PATH"
export REDIS_URL="${BENCH_REDIS_URL:-redis://127.0.0.1:6379/13}" WHATSAPP_API_URL=http://127.0.0.1:18999
export WHATSAPP_APP_SECRET=bench-secret WHATSAPP_ACCESS_TOKEN=bench-token WHATSAPP_PHONE_NUMBER_ID=100000000000001
export WHATSAPP_VERIFY_TOKEN=bench-verify LOG_LEVEL=WARNING PORT="${PORT:-8077}"
if [ "$KIND" = postgres ]; then
  psql -q -h 127.0.0.1 -U postgres -d test -c "DROP DATABASE IF EXISTS crm_bench" -c "CREATE DATABASE crm_bench"
  export DATABASE_URL=postgresql://postgres@127.0.0.1:5432/crm_bench
else
  rm -f /tmp/crm_bench.sqlite3*; export DATABASE_URL=sqlite:////tmp/crm_bench.sqlite3
fi
python - <<'PY'
import os, redis; redis.Redis.from_url(os.environ["REDIS_URL"]).flushdb()
PY
flask --app wsgi db upgrade >/dev/null 2>&1
flask --app wsgi flows import flows/examples bench/two.yaml >/dev/null
honcho start -f Procfile -c worker="${WORKER_PROCESSES:-2}" web worker football scheduler >/tmp/crm_bench_honcho.log 2>&1 &
STACK=$!
trap 'kill $STACK 2>/dev/null; wait $STACK 2>/dev/null' EXIT
for _ in $(seq 100); do curl -sf "localhost:$PORT/healthz" >/dev/null && break; sleep 0.2; done
T="http://127.0.0.1:$PORT/webhooks/whatsapp"
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
