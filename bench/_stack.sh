# Sourced by the end-to-end benchmarks (needs KIND=sqlite|postgres and OUT): environment, a
# private redis-server, a fresh database, the Procfile exactly as shipped
# (honcho start -f Procfile web worker football scheduler: no -c overrides, so every process
# type sizes itself as it does when deployed) and wabench's echo bot, the harness floor that
# each scenario is also run against.
#
# Provides: T (our webhook), ECHO_T (the echo bot's), measure LABEL ARGS... (one wabench run,
# its JSON line annotated by bench/procs.py and appended to $OUT), and a trap that stops
# everything this benchmark started.
export PATH="$PWD/.venv/bin:$PATH"
W="bench/wabench.py"
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
BENCH_PIDS=""
cleanup() {
  # honcho forwards SIGTERM to every Procfile process (warm shutdown) and waits for them
  # first the stack (its workers finish their jobs, talking to Redis), then Redis and the fakes
  [ -n "${STACK:-}" ] && { kill "$STACK" 2>/dev/null || true; wait "$STACK" 2>/dev/null || true; }
  for pid in ${BENCH_PIDS} ${EXTRA_PIDS:-}; do kill "$pid" 2>/dev/null || true; done
  for pid in ${BENCH_PIDS} ${EXTRA_PIDS:-}; do wait "$pid" 2>/dev/null || true; done
  if [ "$KIND" = postgres ] && [ -n "${BENCH_DB_NAME:-}" ]; then
    psql -q -h 127.0.0.1 -U postgres -d test -c "DROP DATABASE IF EXISTS $BENCH_DB_NAME WITH (FORCE)" || true
  fi
  rm -rf "${BENCH_TMP:-/nonexistent}"
}
trap cleanup EXIT
BENCH_TMP=$(mktemp -d /tmp/crm_bench.XXXXXX)

if [ -z "${BENCH_REDIS_URL:-}" ]; then
  rport=$(free_port)
  redis-server --port "$rport" --bind 127.0.0.1 --save "" --appendonly no --dir "$BENCH_TMP" \
    --logfile "$BENCH_TMP/redis.log" &
  BENCH_PIDS="$BENCH_PIDS $!"
  BENCH_REDIS_URL="redis://127.0.0.1:$rport/0"
fi
# Everything on free ports and in private files: several benchmarks (or people) can share a box.
GRAPH_PORT=$(free_port)
export REDIS_URL="$BENCH_REDIS_URL" WHATSAPP_API_URL=http://127.0.0.1:$GRAPH_PORT
export WHATSAPP_APP_SECRET=bench-secret WHATSAPP_ACCESS_TOKEN=bench-token WHATSAPP_PHONE_NUMBER_ID=100000000000001
export WHATSAPP_VERIFY_TOKEN=bench-verify LOG_LEVEL="${BENCH_LOG_LEVEL:-INFO}" PORT="${PORT:-$(free_port)}"
if [ "$KIND" = postgres ]; then
  export BENCH_DB_NAME="crm_bench_$$"
  psql -q -h 127.0.0.1 -U postgres -d test -c "CREATE DATABASE $BENCH_DB_NAME"
  export DATABASE_URL=postgresql://postgres@127.0.0.1:5432/$BENCH_DB_NAME
  # A deployment's PostgreSQL analyzes tables as they grow (autovacuum is on by default, on
  # Heroku too), and a prepared statement is planned again after each ANALYZE. Where the
  # server runs with autovacuum off, the planner would see the empty tables of the start for
  # the whole run; so the benchmark analyzes its scratch database every 10 s, as autovacuum would.
  if [ "$(psql -Atq -h 127.0.0.1 -U postgres -d test -c 'SHOW autovacuum')" = off ]; then
    echo "PostgreSQL runs with autovacuum off: analyzing $BENCH_DB_NAME every 10 s in its place"
    (while sleep 10; do psql -q -h 127.0.0.1 -U postgres -d "$BENCH_DB_NAME" -c ANALYZE 2>/dev/null || true; done) &
    BENCH_PIDS="$BENCH_PIDS $!"
  fi
else
  export DATABASE_URL="sqlite:///$BENCH_TMP/crm_bench.sqlite3"
fi
for _ in $(seq 50); do python3 - <<'PY' 2>/dev/null && break; sleep 0.1; done
import os, redis; redis.Redis.from_url(os.environ["REDIS_URL"]).flushdb()
PY
flask --app wsgi db upgrade >/dev/null 2>&1
flask --app wsgi flows import flows/examples bench/two.yaml >/dev/null
export PROMETHEUS_MULTIPROC_DIR="$BENCH_TMP/prometheus"
mkdir -p "$PROMETHEUS_MULTIPROC_DIR"
HONCHO_LOG="/tmp/crm_bench_honcho.$$.log"  # kept after the run
# --env /dev/null: this script sets the environment itself; a .env in the checkout (the
# README's newcomer copies .env.example) would otherwise override the fake Graph API's URL and
# the private Redis (honcho gives .env precedence over the environment).
honcho start --env /dev/null -f Procfile web worker football scheduler >"$HONCHO_LOG" 2>&1 &
STACK=$!
ECHO_PORT=$(free_port)
python3 "$W" --echo-bot --bot-port "$ECHO_PORT" --graph-url "$WHATSAPP_API_URL" --app-secret bench-secret \
  --graph-token bench-token --duration 86400 >"$BENCH_TMP/echo.log" 2>&1 &
BENCH_PIDS="$BENCH_PIDS $!"
for _ in $(seq 150); do curl -sf "localhost:$PORT/healthz" >/dev/null && break; sleep 0.2; done
T="http://127.0.0.1:$PORT/webhooks/whatsapp"
ECHO_T="http://127.0.0.1:$ECHO_PORT/webhook"
# what the stack sized itself to, and what this machine is
python3 - <<'PY'
import os, subprocess
from crm.base import sizing
m = sizing.detect(); p = sizing.plan()
rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
print(f"machine: {m.describe()}; web {p.web_processes} x {p.web_threads} threads, {p.reply_processes} reply "
      f"processes; {os.environ['DATABASE_URL'].split(':')[0]}; commit {rev}; load {open('/proc/loadavg').read().split()[0]}")
PY
sleep 2  # the reply workers register after the web answers

COMMON_ARGS="--app-secret bench-secret --graph-token bench-token --graph-port $GRAPH_PORT"
measure() {  # measure LABEL TARGET wabench-args...: one run, annotated, appended to $OUT
  local label=$1 target=$2; shift 2
  python3 bench/procs.py snapshot $$ "$BENCH_TMP/before.json"
  python3 "$W" --target "$target" $COMMON_ARGS "$@" --label "$label" --json-out "$BENCH_TMP/run.jsonl" \
    >"$BENCH_TMP/run.txt" 2>&1 || echo "  $label: wabench reported unanswered or failed messages (see $OUT)"
  python3 bench/procs.py snapshot $$ "$BENCH_TMP/after.json"
  python3 bench/procs.py annotate "$BENCH_TMP/before.json" "$BENCH_TMP/after.json" "$BENCH_TMP/run.jsonl" "$OUT"
  rm -f "$BENCH_TMP/run.jsonl"
}
