"""Fixtures: a private redis-server, SQLite and (when reachable) PostgreSQL, and a
real local HTTP server standing in for the Graph API (pytest-httpserver)."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import pytest
import redis as redis_lib
from werkzeug import Response

ROOT = Path(__file__).resolve().parent.parent
POSTGRES_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
SECRET, VERIFY, TOKEN, PNID = "app-secret-for-tests", "verify-me", "graph-token-for-tests", "100000000000001"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def redis_url():
    """Our own redis-server on a free port: the tests never touch anybody's data."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.exit("redis-server is required for the tests (apt-get install redis-server)", 2)
    port, workdir = _free_port(), tempfile.mkdtemp(prefix="crm-redis-")
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", workdir],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    client = redis_lib.Redis.from_url(url)
    for _ in range(100):
        try:
            client.ping()
            break
        except redis_lib.ConnectionError:
            time.sleep(0.05)
    yield url
    proc.terminate()
    proc.wait(10)
    shutil.rmtree(workdir, ignore_errors=True)


def _postgres_available() -> bool:
    try:
        import psycopg

        with psycopg.connect(POSTGRES_URL, connect_timeout=2):
            return True
    except Exception:  # noqa: BLE001
        return False


POSTGRES = _postgres_available()


@pytest.fixture(scope="session")
def postgres_database():
    """A fresh database on the PostgreSQL server, dropped at the end."""
    import psycopg

    name = f"crm_test_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = POSTGRES_URL.rsplit("/", 1)[0]
    yield f"{base}/{name}"
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def db_params():
    return ["sqlite", pytest.param("postgres", marks=pytest.mark.skipif(not POSTGRES, reason="no PostgreSQL"))]


@pytest.fixture(scope="session")
def sqlite_url(tmp_path_factory):
    return f"sqlite:///{tmp_path_factory.mktemp('db') / 'crm.sqlite3'}"


_migrated: set[str] = set()


class FakeGraph:
    """Records Graph API requests; answers are scripted per call (default: 200)."""

    def __init__(self, server):
        self.server = server
        self.requests: list[dict] = []
        self.script: list = []  # items: (status, body) or "timeout"
        self.lock = threading.Lock()
        self.counter = 0
        server.expect_request(f"/v23.0/{PNID}/messages", method="POST").respond_with_handler(self.handle)
        server.expect_request("/v23.0/200000000000002/messages", method="POST").respond_with_handler(self.handle)

    def handle(self, request):
        body = json.loads(request.data)
        with self.lock:
            step = self.script.pop(0) if self.script else None
            self.counter += 1
            wamid = f"wamid.out.{self.counter}"
        if step == "timeout":
            time.sleep(1.5)
            step = None
        entry = {"body": body, "path": request.path, "auth": request.headers.get("Authorization"),
                 "status": (step or (200,))[0]}
        with self.lock:
            self.requests.append(entry)
        if step is not None:
            return Response(json.dumps(step[1]), status=step[0], content_type="application/json")
        if "status" in body:
            return Response(json.dumps({"success": True}), content_type="application/json")
        return Response(json.dumps({"messaging_product": "whatsapp", "contacts": [{"wa_id": body.get("to")}],
                                    "messages": [{"id": wamid}]}), content_type="application/json")

    @property
    def sent(self) -> list[dict]:
        """Accepted (200) message sends, read receipts excluded."""
        return [r["body"] for r in self.requests if "status" not in r["body"] and r["status"] == 200]

    def texts(self, to: str | None = None) -> list[str]:
        out = []
        for body in self.sent:
            if to and body.get("to") != to:
                continue
            if body["type"] == "text":
                out.append(body["text"]["body"])
            elif body["type"] == "interactive":
                out.append(body["interactive"]["body"]["text"])
            else:
                out.append(f"[{body['type']}]")
        return out


@pytest.fixture
def graph(httpserver):
    httpserver.clear()
    fake = FakeGraph(httpserver)
    yield fake
    httpserver.clear()


def make_env(database_url: str, redis_url: str, graph_url: str, **extra) -> dict:
    env = {
        "DATABASE_URL": database_url, "REDIS_URL": redis_url, "WHATSAPP_API_URL": graph_url,
        "WHATSAPP_APP_SECRET": SECRET, "WHATSAPP_VERIFY_TOKEN": VERIFY, "WHATSAPP_ACCESS_TOKEN": TOKEN,
        "WHATSAPP_PHONE_NUMBER_ID": PNID, "WHATSAPP_READ_TIMEOUT": "1", "LOG_LEVEL": "WARNING",
    }
    env.update({k: str(v) for k, v in extra.items()})
    return env


@pytest.fixture(params=db_params())
def database_url(request, sqlite_url):
    if request.param == "postgres":
        return request.getfixturevalue("postgres_database")
    return sqlite_url


@pytest.fixture
def make_app(database_url, redis_url, httpserver):
    """Build an app for the test's database; migrate once, then start from empty tables."""
    apps = []

    def factory(**extra):
        from crm import create_app
        from crm.config import Settings
        from crm.extensions import db

        env = make_env(database_url, redis_url, httpserver.url_for("").rstrip("/"), **extra)
        app = create_app(Settings.from_env(env))
        app.config["TEST_ENV"] = env
        with app.app_context():
            if database_url not in _migrated:
                from flask_migrate import upgrade

                upgrade(directory=str(ROOT / "migrations"))
                _migrated.add(database_url)
            if not apps:
                for table in reversed(db.metadata.sorted_tables):
                    db.session.execute(table.delete())
                db.session.commit()
                app.extensions["redis"].flushdb()
                from flows.store import library_cache

                library_cache.clear()
        apps.append(app)
        return app

    yield factory
    for app in apps:
        with app.app_context():
            from crm.extensions import db

            db.session.remove()
            db.engine.dispose()


@pytest.fixture
def app(make_app, graph):
    return make_app()


def sign(body: bytes, secret: str = SECRET) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


_seq = [0]


def message(wa_id: str, kind: str = "text", body: str = "hi", wamid: str | None = None, **fields) -> dict:
    _seq[0] += 1
    msg = {"from": wa_id, "id": wamid or f"wamid.in.{uuid.uuid4().hex}", "timestamp": str(int(time.time())),
           "type": kind}
    if kind == "text":
        msg["text"] = {"body": body}
    msg.update(fields)
    return msg


def envelope(messages: list[dict] | None = None, statuses: list[dict] | None = None, pnid: str = PNID,
             name: str = "Ana") -> dict:
    value = {"messaging_product": "whatsapp",
             "metadata": {"display_phone_number": "15550000000", "phone_number_id": pnid}}
    if messages:
        value["contacts"] = [{"profile": {"name": name}, "wa_id": m["from"]} for m in messages]
        value["messages"] = messages
    if statuses:
        value["statuses"] = statuses
    return {"object": "whatsapp_business_account",
            "entry": [{"id": "WABA", "changes": [{"field": "messages", "value": value}]}]}


def post_webhook(client, payload, secret: str = SECRET, raw: bytes | None = None):
    body = raw if raw is not None else json.dumps(payload).encode()
    return client.post("/webhooks/whatsapp", data=body, content_type="application/json",
                       headers={"X-Hub-Signature-256": sign(body, secret)})


def run_worker(app, queues=("high", "default")):
    """Drain the queues in this process (RQ SimpleWorker, burst), like the real worker."""
    from crm.worker import build_worker

    worker = build_worker(app, list(queues))
    worker.work(burst=True, with_scheduler=False)


def spawn_workers(app, n: int, burst: bool = True, queues=("high", "default")) -> list[subprocess.Popen]:
    env = {**os.environ, **app.config["TEST_ENV"], "PYTHONPATH": str(ROOT)}
    args = [sys.executable, "-m", "crm.worker", *queues] + (["--burst"] if burst else [])
    return [subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            for _ in range(n)]


def import_examples(app, *extra_docs: str):
    from flows.document import parse_flow
    from flows.store import import_flows, load_files

    with app.app_context():
        loaded = load_files([str(ROOT / "flows" / "examples")])
        loaded += [parse_flow(text, f"<test {i}>") for i, text in enumerate(extra_docs)]
        import_flows(loaded)
