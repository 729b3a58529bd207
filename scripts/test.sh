#!/usr/bin/env bash
# Command 2: install everything and run the whole test suite.
# Tests start their own redis-server on a free port (never touching your data) and use
# SQLite, and every database test runs on PostgreSQL too when it answers at TEST_POSTGRES_URL
# (default postgresql://postgres@127.0.0.1:5432/test; started or installed when missing, and
# required under CI=true).
source "$(dirname "$0")/_common.sh"
source "$(dirname "$0")/_browser.sh"
ensure_venv requirements-dev.txt
ensure_redis_server_binary || { echo "error: the tests need redis-server: apt-get install redis-server"; exit 1; }
ensure_chromium || [ "${CI:-}" != true ] || { echo "error: CI runs the browser tests: chromium is required"; exit 1; }
ensure_postgres || [ "${CI:-}" != true ] || { echo "error: CI runs every database test on PostgreSQL too:" \
  "nothing answers at ${TEST_POSTGRES_URL:-postgresql://postgres@127.0.0.1:5432/test}"; exit 1; }
ruff check .
lint-imports --no-cache   # the one-way layers of docs/architecture.md (.importlinter)
mypy                      # the pure modules (mypy.ini)
set +e
python -m pytest "$@"
status=$?
set -e
if [ "$status" = 5 ]; then echo "pytest collected no tests"; exit 0; fi
exit "$status"
