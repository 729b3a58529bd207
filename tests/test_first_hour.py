"""The first hour: errors that name their cause, a quiet scheduler, Redis over TLS (rediss://)."""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import sys
import tempfile
import time
import warnings

import pytest
import redis as redis_lib
from rq_scheduler import Scheduler

from crm.app import create_app
from crm.app.worker import build_worker
from crm.base.config import ConfigError, Settings
from crm.base.extensions import redis_options, redis_url_with_options
from tests.helpers import ROOT, VERIFY, free_port, make_env

# --- errors that say what to set ------------------------------------------------------------


@pytest.fixture
def no_verify_token_app(make_app, graph):
    return make_app(WHATSAPP_VERIFY_TOKEN="")  # built (and migrated) before caplog starts capturing


def test_webhook_verification_names_the_missing_verify_token(no_verify_token_app, caplog):
    client = no_verify_token_app.test_client()
    response = client.get("/webhooks/whatsapp?hub.mode=subscribe&hub.verify_token=x&hub.challenge=1")
    assert response.status_code == 403
    assert "WHATSAPP_VERIFY_TOKEN is not set" in response.get_data(as_text=True)
    assert any("WHATSAPP_VERIFY_TOKEN is not set" in r.getMessage() for r in caplog.records)


def test_webhook_verification_says_the_token_does_not_match(app):
    client = app.test_client()
    wrong = client.get("/webhooks/whatsapp?hub.mode=subscribe&hub.verify_token=nope&hub.challenge=1")
    assert wrong.status_code == 403
    body = wrong.get_data(as_text=True)
    assert "does not match WHATSAPP_VERIFY_TOKEN" in body and VERIFY not in body
    ok = client.get(f"/webhooks/whatsapp?hub.mode=subscribe&hub.verify_token={VERIFY}&hub.challenge=77")
    assert ok.status_code == 200 and ok.get_data(as_text=True) == "77"


def test_operator_api_without_configured_tokens_says_so(make_app, graph):
    client = make_app().test_client()
    response = client.get("/api/contacts", headers={"Authorization": "Bearer anything"})
    assert response.status_code == 401
    assert response.json["error"]["message"] == "no operator tokens are configured (set OPERATOR_API_TOKENS)"
    configured = make_app(OPERATOR_API_TOKENS="tok-1").test_client()
    other = configured.get("/api/contacts", headers={"Authorization": "Bearer wrong"})
    assert other.status_code == 401 and "OPERATOR_API_TOKENS" not in other.json["error"]["message"]


# --- a scheduler start prints nothing the user cannot act on ------------------------------


def test_registering_schedules_raises_no_future_warning(app):
    import scheduler as sched  # here, like the other tests: importing it sets TZ=UTC for the process

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sched.register(Scheduler(connection=app.extensions["redis"]), app)
    assert [str(w.message)[:60] for w in caught] == []


def test_scheduler_start_prints_no_warning(redis_url, sqlite_url):
    env = {**os.environ, **make_env(sqlite_url, redis_url, "http://127.0.0.1:9"), "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "scheduler.py", "--list"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "crm-sessions-cleanup" in result.stdout
    assert "Warning" not in result.stderr, result.stderr


# --- Redis over TLS ------------------------------------------------------------------------


def settings_for(url: str, verify: str | None = None) -> Settings:
    env = {"REDIS_URL": url} if verify is None else {"REDIS_URL": url, "REDIS_TLS_VERIFY": verify}
    return Settings.from_env(env)


def test_redis_connection_options():
    base = {"socket_connect_timeout": 2, "socket_timeout": 5, "health_check_interval": 30}
    assert redis_options(settings_for("redis://h:6379/0")) == base
    assert redis_options(settings_for("redis://h:6379/0", "0")) == base  # no TLS, nothing to verify
    assert redis_options(settings_for("rediss://h:6380")) == base  # verified by default
    assert redis_options(settings_for("rediss://h:6380", "1")) == base
    assert redis_options(settings_for("rediss://h:6380", "0")) == {**base, "ssl_cert_reqs": None}
    assert redis_url_with_options(settings_for("rediss://:pw@h:6380", "0")) == "rediss://:pw@h:6380?ssl_cert_reqs=none"
    assert redis_url_with_options(settings_for("rediss://h:6380/0?db=1", "0")) == "rediss://h:6380/0?db=1&ssl_cert_reqs=none"
    assert redis_url_with_options(settings_for("rediss://h:6380")) == "rediss://h:6380"
    assert redis_url_with_options(settings_for("redis://h:6379", "0")) == "redis://h:6379"
    with pytest.raises(ConfigError, match="REDIS_TLS_VERIFY"):
        settings_for("rediss://h:6380", "maybe")


@pytest.fixture(scope="module")
def tls_redis_url():
    """A redis-server that speaks only TLS, with a self-signed certificate (as Heroku's does)."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a self-signed certificate")
    workdir = tempfile.mkdtemp(prefix="crm-redis-tls-")
    cert, key = f"{workdir}/cert.pem", f"{workdir}/key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert,
                    "-days", "1", "-subj", "/CN=redis.example.invalid"], check=True, capture_output=True)
    port = free_port()
    proc = subprocess.Popen([shutil.which("redis-server"), "--port", "0", "--tls-port", str(port),
                             "--bind", "127.0.0.1", "--tls-cert-file", cert, "--tls-key-file", key,
                             "--tls-ca-cert-file", cert, "--tls-auth-clients", "no", "--save", "",
                             "--appendonly", "no", "--dir", workdir],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"rediss://127.0.0.1:{port}/0"
    client = redis_lib.Redis.from_url(url, ssl_cert_reqs=None)
    for _ in range(100):
        try:
            client.ping()
            break
        except redis_lib.ConnectionError:
            if proc.poll() is not None:
                pytest.skip(f"this redis-server has no TLS support: {proc.stderr.read()[-300:]}")
            time.sleep(0.05)
    yield url
    proc.terminate()
    proc.wait(10)
    shutil.rmtree(workdir, ignore_errors=True)


def test_every_redis_client_connects_over_tls_with_a_self_signed_certificate(tls_redis_url, sqlite_url):
    import scheduler as sched  # here, like the other tests: importing it sets TZ=UTC for the process

    env = make_env(sqlite_url, tls_redis_url, "http://127.0.0.1:9", REDIS_TLS_VERIFY="0",
                   OPERATOR_API_TOKENS="tls-token")
    app = create_app(Settings.from_env(env))
    app.extensions["redis"].flushdb()
    assert app.extensions["redis"].ping()  # queues, locks, markers, the football rate limiter
    assert app.test_client().get("/healthz").status_code == 200
    # rq-dashboard opens its own connection from the URL on every request
    auth = {"Authorization": "Basic " + base64.b64encode(b"ops:tls-token").decode()}
    queues = app.test_client().get("/rq/0/data/queues.json", headers=auth)
    assert queues.status_code == 200, queues.data[:300]
    assert app.redis_conn.ping()
    # the scheduler registers its jobs on the app's connection
    assert "crm-recover-stalled" in sched.register(Scheduler(connection=app.extensions["redis"]), app)
    # a worker runs a job; with_scheduler makes RQ clone the connection for its own scheduler
    job = app.extensions["queues"]["default"].enqueue("os.getpid")
    build_worker(app, ["default"]).work(burst=True, with_scheduler=True)
    job.refresh()
    assert job.get_status() == "finished"


def test_a_self_signed_certificate_is_refused_unless_allowed(tls_redis_url):
    verified = redis_lib.Redis.from_url(tls_redis_url, **redis_options(settings_for(tls_redis_url)))
    with pytest.raises(redis_lib.ConnectionError, match="certificate verify failed"):
        verified.ping()
    allowed = redis_lib.Redis.from_url(tls_redis_url, **redis_options(settings_for(tls_redis_url, "0")))
    assert allowed.ping()
