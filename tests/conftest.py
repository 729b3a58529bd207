"""Fixtures: a private redis-server, SQLite and (when reachable) PostgreSQL, and a
real local HTTP server standing in for the Graph API (pytest-httpserver)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
import uuid

import pytest
import redis as redis_lib
from flask_migrate import upgrade

from crm.app import create_app
from crm.base.config import Settings
from crm.base.extensions import db
from flows.store import library_cache
from tests.helpers import ROOT, FakeGraph, free_port, make_env

POSTGRES_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")


@pytest.fixture(scope="session")
def redis_url():
    """Our own redis-server on a free port: the tests never touch anybody's data."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.exit("redis-server is required for the tests (apt-get install redis-server)", 2)
    port, workdir = free_port(), tempfile.mkdtemp(prefix="crm-redis-")
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
    except Exception:
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


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: starts processes or waits on real time (deselect with -m 'not slow')")
    if os.environ.get("CI") == "true" and not POSTGRES:
        raise pytest.UsageError(f"CI needs PostgreSQL at {POSTGRES_URL}: it did not answer")


@pytest.fixture(scope="session")
def sqlite_url(tmp_path_factory):
    return f"sqlite:///{tmp_path_factory.mktemp('db') / 'crm.sqlite3'}"


_migrated: set[str] = set()


@pytest.fixture
def graph(httpserver):
    httpserver.clear()
    fake = FakeGraph(httpserver)
    yield fake
    httpserver.clear()


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
        env = make_env(database_url, redis_url, httpserver.url_for("").rstrip("/"), **extra)
        app = create_app(Settings.from_env(env))
        app.config["TEST_ENV"] = env
        with app.app_context():
            if database_url not in _migrated:
                upgrade(directory=str(ROOT / "migrations"))
                _migrated.add(database_url)
            if not apps:
                for table in reversed(db.metadata.sorted_tables):
                    db.session.execute(table.delete())
                db.session.commit()
                app.extensions["redis"].flushdb()
                library_cache.clear()
        apps.append(app)
        return app

    yield factory
    for app in apps:
        with app.app_context():
            db.session.remove()
            db.engine.dispose()


@pytest.fixture
def app(make_app, graph):
    return make_app()


