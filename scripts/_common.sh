# Shared by scripts/run.sh and scripts/test.sh: a virtualenv and a Redis server.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

ensure_venv() {  # $1: requirements file
  local py="${PYTHON:-python3}"
  command -v "$py" >/dev/null || { echo "error: python3 is required (3.11+)"; exit 1; }
  [ -x .venv/bin/python ] || "$py" -m venv .venv
  local stamp=".venv/.installed-$(cat requirements*.txt | sha1sum | cut -c1-12)"
  if [ ! -f "$stamp" ]; then
    .venv/bin/python -m pip install --quiet --upgrade pip >/dev/null 2>&1 || true
    .venv/bin/python -m pip install --quiet -r "$1"
    touch "$stamp"
  fi
  export PATH="$ROOT/.venv/bin:$PATH"
}

ensure_redis_server_binary() {
  command -v redis-server >/dev/null && return 0
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing Debian's redis-server ..."
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server) >/dev/null
    return 0
  fi
  return 1
}

redis_answers() {  # $1: URL
  python - "$1" <<'PY' >/dev/null 2>&1
import sys, redis
redis.Redis.from_url(sys.argv[1], socket_connect_timeout=1).ping()
PY
}
