"""The real app in a thread (werkzeug's server) with a real RQ worker process, and Debian's
headless Chromium driven by Selenium.

Chromium and chromium-driver are installed by ``scripts/test.sh`` when missing (as root). Under
CI (``CI=true``) a missing browser fails the tests; elsewhere they are skipped with the reason.
Screenshots go to ``$SCREENSHOT_DIR`` (``scripts/screenshots.sh`` points it at docs/screenshots).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
import requests
from rq import Worker

from tests.helpers import PNID, ROOT, envelope, free_port, import_examples, message, sign

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--window-size=1440,900", "--lang=en-US", "--hide-scrollbars"]


def _require_browser() -> None:
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not os.access(p, os.X_OK)]
    if not missing:
        return
    reason = (f"{' and '.join(missing)} missing: apt-get install chromium chromium-driver "
              "(scripts/test.sh does it as root)")
    if os.environ.get("CI") == "true":
        pytest.fail(f"browser tests must run under CI: {reason}")
    pytest.skip(reason)


@pytest.fixture
def database_url(sqlite_url):
    """The browser tests run on SQLite only: what they check sits above the database, and the
    test-client tests of the same pages run on both databases."""
    return sqlite_url


class LiveServer:
    def __init__(self, app, graph):
        from werkzeug.serving import make_server

        self.app, self.graph = app, graph
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = make_server("127.0.0.1", self.port, app, threaded=True)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.workers: list = []

    def webhook(self, wa_id: str, text: str, name: str = "Ana") -> None:
        """A user's message, posted to the running app exactly as Meta does (signed)."""
        body = json.dumps(envelope([message(wa_id, body=text)], pnid=PNID, name=name)).encode()
        response = requests.post(f"{self.url}/webhooks/whatsapp", data=body, timeout=10, headers={
            "Content-Type": "application/json", "X-Hub-Signature-256": sign(body)})
        assert response.status_code == 200, response.text

    def wait_for(self, check, timeout: float = 30.0, what: str = "condition"):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = check()
            if value:
                return value
            time.sleep(0.1)
        dead = [p.stderr.read().decode()[-2000:] for p in self.workers if p.poll() is not None]
        raise AssertionError(f"timed out waiting for {what}" + (f"; the worker died: {dead}" if dead else ""))


def start_worker(app) -> subprocess.Popen:
    """A reply worker process (as ``spawn_workers`` starts them) in its own process group: RQ's
    worker forks its scheduler and starts it again when it stops, so the whole group is ended
    at the end, or a scheduler left behind would keep serving this Redis in the next test."""
    env = {**os.environ, **app.config["TEST_ENV"], "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "crm.app.worker", "high", "default"], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)


def stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM to the worker's process group (the worker and what it forked), SIGKILL if it lingers."""
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
        except subprocess.TimeoutExpired:
            continue
        deadline = time.monotonic() + wait  # the group may outlive its leader for a moment
        while time.monotonic() < deadline:
            try:
                os.killpg(proc.pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.05)


@pytest.fixture
def live(make_app, graph):
    """The app served on a free port, flows imported, with one RQ worker process replying."""
    _require_browser()
    app = make_app(SESSION_IDLE_MINUTES="60")
    import_examples(app)
    server = LiveServer(app, graph)
    server.thread.start()
    server.workers = [start_worker(app)]
    # the worker process imports the app first: on a busy machine that takes a while
    server.wait_for(lambda: Worker.count(connection=app.extensions["redis"]) >= 1, timeout=90,
                    what="the RQ worker to start")
    yield server
    for proc in server.workers:
        stop_group(proc)
    server.server.shutdown()
    server.thread.join(10)


@pytest.fixture
def browser():
    """A factory of fresh headless Chromium sessions (own profile each); all quit at the end."""
    _require_browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    drivers, profiles = [], []

    def start():
        profile = tempfile.mkdtemp(prefix="crm-chromium-")
        profiles.append(profile)
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for flag in [*FLAGS, f"--user-data-dir={profile}"]:
            options.add_argument(flag)
        driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
        driver.set_page_load_timeout(30)
        drivers.append(driver)
        return driver

    yield start
    for driver in drivers:
        driver.quit()
    for profile in profiles:
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture
def shoot():
    """Save a PNG of the page when SCREENSHOT_DIR is set (docs/screenshots via scripts/screenshots.sh)."""
    target = os.environ.get("SCREENSHOT_DIR")

    def save(driver, name: str) -> None:
        if target:
            Path(target).mkdir(parents=True, exist_ok=True)
            driver.save_screenshot(str(Path(target) / f"{name}.png"))

    return save
