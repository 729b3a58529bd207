# Shared by scripts/run.sh and scripts/test.sh: a virtualenv and a Redis server.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

# The requirements files a file pulls in with "-r other.txt" (recursively), itself first.
requirement_files() {  # $1: requirements file
  local f="$1"
  echo "$f"
  sed -n 's/^[[:space:]]*-r[[:space:]]*\([^[:space:]#]*\).*/\1/p' "$f" | while read -r inc; do
    requirement_files "$(dirname "$f")/$inc"
  done
}

# One install marker per requirements file, named after the file and a hash of everything it
# installs: run.sh (requirements.txt) and test.sh (requirements-dev.txt) each install what they
# need, in any order, and a changed pin reinstalls.
install_marker() {  # $1: requirements file
  local files hash
  files=$(requirement_files "$1")
  # shellcheck disable=SC2086 # one file name a line, no spaces in our file names
  hash=$(cat $files | sha1sum | cut -c1-12)
  echo ".venv/.installed-$(basename "$1" .txt)-$hash"
}

ensure_venv() {  # $1: requirements file
  local py="${PYTHON:-python3}"
  command -v "$py" >/dev/null || { echo "error: python3 is required (3.11+)"; exit 1; }
  "$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
    || { echo "error: Python 3.11+ is required; $py is $("$py" --version 2>&1) (set PYTHON=python3.11)"; exit 1; }
  if [ ! -x .venv/bin/python ] || ! .venv/bin/python -m pip --version >/dev/null 2>&1; then
    rm -rf .venv
    "$py" -m venv .venv || {
      rm -rf .venv
      echo "error: '$py -m venv' failed; on Debian/Ubuntu: apt-get install python3-venv"; exit 1; }
  fi
  local marker
  marker=$(install_marker "$1")
  if [ ! -f "$marker" ]; then
    # Two scripts started at once must not run pip over each other in the same .venv.
    exec 9>.venv/.install.lock
    command -v flock >/dev/null && flock 9
    if [ ! -f "$marker" ]; then
      echo "installing $1 into .venv ..."
      .venv/bin/python -m pip install --quiet --upgrade pip >/dev/null 2>&1 || true
      .venv/bin/python -m pip install --quiet -r "$1"
      # What this file pulls in with -r is installed now too.
      local f
      for f in $(requirement_files "$1"); do touch "$(install_marker "$f")"; done
    fi
    exec 9>&-
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

redis_answers() {  # $1: URL; REDIS_TLS_VERIFY=0 accepts a self-signed certificate (rediss://)
  python - "$1" <<'PY' >/dev/null 2>&1
import os, sys, redis
kwargs = {"socket_connect_timeout": 1}
if sys.argv[1].startswith("rediss://") and os.environ.get("REDIS_TLS_VERIFY", "1").strip().lower() in ("0", "false", "no", "off"):
    kwargs["ssl_cert_reqs"] = None
redis.Redis.from_url(sys.argv[1], **kwargs).ping()
PY
}

postgres_answers() {  # $1: URL
  python - "$1" <<'PY' >/dev/null 2>&1
import sys, psycopg
psycopg.connect(sys.argv[1], connect_timeout=2).close()
PY
}

# PostgreSQL for the tests' second database run (required under CI=true): use TEST_POSTGRES_URL
# when it answers; else start an installed but stopped cluster; else, as root with apt-get,
# install Debian's postgresql, start it and give the tests a password login on 127.0.0.1.
ensure_postgres() {
  local url="${TEST_POSTGRES_URL:-postgresql://postgres@127.0.0.1:5432/test}"
  postgres_answers "$url" && return 0
  if ! command -v pg_ctlcluster >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing Debian's postgresql for the tests ..."
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql) >/dev/null || return 1
  fi
  command -v pg_ctlcluster >/dev/null || return 1
  local version
  version=$(ls /etc/postgresql 2>/dev/null | sort -V | tail -n 1)
  [ -n "$version" ] || return 1
  pg_ctlcluster --skip-systemctl-redirect "$version" main start >/dev/null 2>&1 || true
  for _ in $(seq 50); do postgres_answers "$url" && return 0; sleep 0.2; done
  # A fresh Debian cluster: password login for the tests over TCP, and their database.
  if [ "$(id -u)" = 0 ] && command -v su >/dev/null; then
    su postgres -c "psql -q -c \"ALTER USER postgres PASSWORD 'postgres'\"" >/dev/null 2>&1 || true
    su postgres -c "createdb test" >/dev/null 2>&1 || true
    export TEST_POSTGRES_URL="postgresql://postgres:postgres@127.0.0.1:5432/test"
    postgres_answers "$TEST_POSTGRES_URL" && return 0
  fi
  return 1
}
