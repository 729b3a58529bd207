"""A 60-second Redis outage under a running stack (web, reply worker, scheduler processes):
every process is alive afterwards and every message is answered exactly once."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import pytest
import redis as redis_lib
import requests

from tests.helpers import ROOT, envelope, free_port, import_examples, message, sign, wait_for

OUTAGE_SECONDS = float(os.environ.get("TEST_OUTAGE_SECONDS", "60"))


class RedisServer:
    def __init__(self):
        self.port, self.dir = free_port(), tempfile.mkdtemp(prefix="crm-outage-redis-")
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc = None

    def start(self):
        self.proc = subprocess.Popen([shutil.which("redis-server"), "--port", str(self.port), "--bind", "127.0.0.1",
                                      "--save", "", "--appendonly", "no", "--dir", self.dir],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis_lib.Redis.from_url(self.url)
        assert wait_for(lambda: _pings(client), 10)

    def stop(self):
        self.proc.kill()
        self.proc.wait(10)


def _pings(client) -> bool:
    try:
        return bool(client.ping())
    except redis_lib.ConnectionError:
        return False


@pytest.mark.slow
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_redis_outage_loses_nothing_and_kills_nothing(make_app, graph):
    redis_server = RedisServer()
    redis_server.start()
    app = make_app(REDIS_URL=redis_server.url)
    import_examples(app)
    port = free_port()
    env = {**os.environ, **app.config["TEST_ENV"], "PYTHONPATH": str(ROOT), "PORT": str(port),
           "WEB_CONCURRENCY": "1", "LOG_LEVEL": "WARNING", "WEB_HOST": "127.0.0.1"}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    procs = {
        "web": subprocess.Popen([sys.executable, "-m", "crm.app.server"],
                                cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
        "worker": subprocess.Popen([sys.executable, "-m", "crm.app.worker", "high", "default"], cwd=ROOT, env=env,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
        "scheduler": subprocess.Popen([sys.executable, "scheduler.py", "--interval", "1"], cwd=ROOT, env=env,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
    }
    base = f"http://127.0.0.1:{port}"

    def post(wa_id: str, text: str, wamid: str) -> int:
        body = envelope([message(wa_id, body=text, wamid=wamid)])
        raw = json.dumps(body).encode()
        try:
            return requests.post(f"{base}/webhooks/whatsapp", data=raw, timeout=10, headers={
                "Content-Type": "application/json", "X-Hub-Signature-256": sign(raw)}).status_code
        except requests.RequestException:
            return 0

    def health() -> int:
        try:
            return requests.get(f"{base}/healthz", timeout=5).status_code
        except requests.RequestException:
            return 0

    try:
        assert wait_for(lambda: health() == 200, 30)
        users = [f"5550{i}" for i in range(5)]
        for i, u in enumerate(users):
            assert post(u, "hi", f"wamid.before.{i}") == 200
        assert wait_for(lambda: all(len(graph.texts(u)) == 1 for u in users), 30)

        redis_server.stop()
        refused = [(u, f"wamid.during.{i}") for i, u in enumerate(users) if post(u, "menu", f"wamid.during.{i}") != 200]
        assert len(refused) == len(users)  # 503: Meta keeps them and delivers them again
        assert health() == 503
        time.sleep(OUTAGE_SECONDS)
        assert {name: p.poll() for name, p in procs.items()} == dict.fromkeys(procs)  # all alive

        redis_server.start()  # empty: Redis kept nothing
        assert wait_for(lambda: health() == 200, 30)
        for u, wamid in refused:  # Meta's re-delivery
            assert post(u, "menu", wamid) == 200
        assert wait_for(lambda: all(len(graph.texts(u)) == 2 for u in users), 60)
        time.sleep(2)
        assert all(len(graph.texts(u)) == 2 for u in users)  # once each, nothing twice
        schedules = redis_lib.Redis.from_url(redis_server.url).zrange("rq:scheduler:scheduled_jobs", 0, -1)
        assert wait_for(lambda: len(redis_lib.Redis.from_url(redis_server.url).zrange(
            "rq:scheduler:scheduled_jobs", 0, -1)) >= 2, 20), schedules  # registrations asserted again
        assert {name: p.poll() for name, p in procs.items()} == dict.fromkeys(procs)
    finally:
        for p in procs.values():
            p.terminate()
        for p in procs.values():
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
        if redis_server.proc and redis_server.proc.poll() is None:
            redis_server.stop()
        shutil.rmtree(redis_server.dir, ignore_errors=True)


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)  # an SQLite file has no connection to lose
def test_an_idle_connection_the_server_dropped_is_replaced_before_use(app):
    """PostgreSQL restarted (or a proxy dropped the connection) while the pool held it idle:
    the next checkout pings it, finds it dead and takes a fresh one; nothing fails."""
    import psycopg

    from crm.base.extensions import IDLE_PING_AFTER, db

    with app.app_context():
        engine = db.engine
        assert engine.dialect.name == "postgresql"
        with engine.connect() as conn:
            pid = conn.exec_driver_sql("SELECT pg_backend_pid()").scalar()
            conn.connection.info["used_at"] -= IDLE_PING_AFTER + 1  # as if idle that long
        with psycopg.connect(engine.url.render_as_string(hide_password=False).replace("+psycopg", ""),
                             autocommit=True) as other:
            other.execute("SELECT pg_terminate_backend(%s)", (pid,))
        with engine.connect() as conn:
            assert conn.exec_driver_sql("SELECT pg_backend_pid()").scalar() != pid
