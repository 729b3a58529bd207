#!/usr/bin/env bash
# Screenshots of every inbox page (docs/screenshots/*.png, linked from README and docs/inbox.md),
# taken by the browser tests in Debian's headless Chromium.
source "$(dirname "$0")/_common.sh"
source "$(dirname "$0")/_browser.sh"
ensure_venv requirements-dev.txt
ensure_redis_server_binary || { echo "error: the browser tests need redis-server"; exit 1; }
ensure_chromium || exit 1
SCREENSHOT_DIR="$ROOT/docs/screenshots" python -m pytest tests/browser -q "$@"
