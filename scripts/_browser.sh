# Sourced by scripts/test.sh: Debian's headless Chromium and its driver for the browser tests.
ensure_chromium() {
  if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then
    return 0
  fi
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing Debian's chromium and chromium-driver for the browser tests ..."
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      chromium chromium-driver fonts-dejavu-core fonts-noto-color-emoji) >/dev/null
    [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ] && return 0
  fi
  echo "note: chromium/chromium-driver are not installed and cannot be installed here (not root or no" \
       "apt-get): the browser tests will be skipped (under CI=true they fail instead)"
  return 1
}
