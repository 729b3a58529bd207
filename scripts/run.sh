#!/usr/bin/env bash
# Command 1: install everything and run the whole system (web, worker, football worker,
# scheduler) on the embedded SQLite database, with migrations applied and example flows loaded.
source "$(dirname "$0")/_common.sh"
ensure_venv requirements.txt
[ -f .env ] && set -a && source .env && set +a
export REDIS_URL="${REDIS_URL:-redis://127.0.0.1:6379/0}"
export PORT="${PORT:-8000}"

if ! redis_answers "$REDIS_URL"; then
  if ensure_redis_server_binary; then
    port=$(python -c "import sys,urllib.parse as u; print(u.urlparse(sys.argv[1]).port or 6379)" "$REDIS_URL")
    mkdir -p instance
    echo "starting redis-server on port $port (data in instance/) ..."
    redis-server --daemonize yes --bind 127.0.0.1 --port "$port" --dir "$ROOT/instance" \
      --save "" --appendonly no --logfile "$ROOT/instance/redis.log" >/dev/null
    for _ in $(seq 50); do redis_answers "$REDIS_URL" && break; sleep 0.1; done
  fi
  redis_answers "$REDIS_URL" || { echo "error: no Redis at $REDIS_URL: install redis-server (apt-get install redis-server) or set REDIS_URL"; exit 1; }
fi

flask --app wsgi db upgrade
flask --app wsgi flows import flows/examples
unset_vars=""
for name in WHATSAPP_APP_SECRET WHATSAPP_VERIFY_TOKEN WHATSAPP_ACCESS_TOKEN WHATSAPP_PHONE_NUMBER_ID OPERATOR_API_TOKENS; do
  [ -n "${!name:-}" ] || unset_vars="$unset_vars $name"
done
if [ -n "$unset_vars" ]; then
  echo "note: not set in .env:$unset_vars (WhatsApp and the operator API need them; see docs/going-live.md)"
fi
echo "web on http://127.0.0.1:$PORT  (webhook: /webhooks/whatsapp, health: /healthz, inbox: /inbox)"
echo "CLI: .venv/bin/flask --app wsgi --help  (reads .env)"
case "$(flask --app wsgi operators list 2>/dev/null || true)" in
  "no operators yet"*) echo "note: nobody can sign in to /inbox yet: flask --app wsgi operators create NAME --role admin";;
esac
# /metrics adds up the samples of every process through this directory; stale files are dropped.
export PROMETHEUS_MULTIPROC_DIR="${PROMETHEUS_MULTIPROC_DIR:-$PWD/instance/prometheus}"
rm -rf "$PROMETHEUS_MULTIPROC_DIR" && mkdir -p "$PROMETHEUS_MULTIPROC_DIR"
# The Procfile as written (each line sizes itself: WEB_CONCURRENCY, WORKER_PROCESSES override).
# Not the one-shot 'release' line: honcho stops every process when one exits.
exec honcho start -f Procfile web worker football scheduler
