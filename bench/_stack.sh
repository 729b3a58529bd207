# Sourced by the end-to-end benchmarks: environment, a fresh database, and the whole stack
# (gunicorn, reply workers, football worker, scheduler) started with honcho. Needs KIND.
export PATH="$PWD/.venv/bin:$PATH"
export REDIS_URL="${BENCH_REDIS_URL:-redis://127.0.0.1:6379/13}" WHATSAPP_API_URL=http://127.0.0.1:18999
export WHATSAPP_APP_SECRET=bench-secret WHATSAPP_ACCESS_TOKEN=bench-token WHATSAPP_PHONE_NUMBER_ID=100000000000001
export WHATSAPP_VERIFY_TOKEN=bench-verify LOG_LEVEL="${BENCH_LOG_LEVEL:-INFO}" PORT="${PORT:-8077}"
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
export PROMETHEUS_MULTIPROC_DIR=/tmp/crm_bench_prometheus
rm -rf "$PROMETHEUS_MULTIPROC_DIR" && mkdir -p "$PROMETHEUS_MULTIPROC_DIR"
honcho start -f Procfile -c worker="${WORKER_PROCESSES:-4}" web worker football scheduler >/tmp/crm_bench_honcho.log 2>&1 &
STACK=$!
trap 'kill $STACK ${EXTRA_PIDS:-} 2>/dev/null; wait $STACK 2>/dev/null' EXIT
for _ in $(seq 100); do curl -sf "localhost:$PORT/healthz" >/dev/null && break; sleep 0.2; done
T="http://127.0.0.1:$PORT/webhooks/whatsapp"
