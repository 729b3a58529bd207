"""Configuration, /healthz, migrations, queues, Procfile and scheduled jobs."""

from __future__ import annotations

import pytest
from sqlalchemy import inspect

from crm.base.config import ConfigError, Settings
from tests.helpers import ROOT, make_env


def test_defaults():
    s = Settings.from_env({})
    assert s.database_url.startswith("sqlite:///") and s.database_url.endswith("instance/crm.sqlite3")
    assert s.redis_url == "redis://127.0.0.1:6379/0"
    assert s.whatsapp_api_url == "https://graph.facebook.com"
    assert s.session_idle_minutes == 15.0 and s.session_cleanup_cron == "*/5 * * * *"
    assert s.apifootball_url == "https://apiv3.apifootball.com"
    assert "expired" in s.session_expired_message


@pytest.mark.parametrize("url, expected", [
    ("postgres://u:p@h:5432/db", "postgresql+psycopg://u:p@h:5432/db"),
    ("postgresql://u@h/db", "postgresql+psycopg://u@h/db"),
    ("sqlite:////tmp/x.db", "sqlite:////tmp/x.db"),
])
def test_database_url_forms(url, expected):
    assert Settings.from_env({"DATABASE_URL": url}).database_url == expected


def test_good_values():
    s = Settings.from_env({"SESSION_IDLE_MINUTES": "0.05", "SESSION_CLEANUP_CRON": "*/1 * * * *",
                           "OPERATOR_API_TOKENS": "a1b2c3, d4e5f6", "WHATSAPP_API_URL": "http://127.0.0.1:18999/"})
    assert s.session_idle_minutes == 0.05
    assert s.operator_api_tokens == ("a1b2c3", "d4e5f6")
    assert s.whatsapp_api_url == "http://127.0.0.1:18999"


@pytest.mark.parametrize("name, value", [
    ("SESSION_IDLE_MINUTES", "fifteen"),
    ("SESSION_IDLE_MINUTES", "0"),
    ("SESSION_CLEANUP_CRON", "every five minutes"),
    ("REDIS_URL", "localhost:6379"),
    ("DATABASE_URL", "mysql://x"),
    ("WHATSAPP_API_URL", "graph.facebook.com"),
    ("WHATSAPP_API_VERSION", "23"),
    ("APIFOOTBALL_RATE_PER_MINUTE", "-3"),
    ("LOG_LEVEL", "LOUD"),
])
def test_bad_values_name_the_variable(name, value):
    with pytest.raises(ConfigError) as err:
        Settings.from_env({name: value})
    assert name in str(err.value)


def test_settings_repr_hides_secrets():
    s = Settings.from_env({"WHATSAPP_ACCESS_TOKEN": "tok-secret", "DATABASE_URL": "postgres://u:pw@h/db"})
    assert "tok-secret" not in repr(s) and "pw" not in repr(s)


def test_healthz_ok(app):
    response = app.test_client().get("/healthz")
    assert response.status_code == 200
    assert response.json["checks"] == {"database": "ok", "redis": "ok"}


def test_healthz_redis_down(sqlite_url, httpserver):
    from crm.app import create_app

    closed = f"redis://127.0.0.1:{_closed_port()}/0"
    app = create_app(Settings.from_env(make_env(sqlite_url, closed, httpserver.url_for(""))))
    response = app.test_client().get("/healthz")
    assert response.status_code == 503
    assert response.json["down"] == ["redis"]


def test_healthz_database_down(redis_url, httpserver):
    from crm.app import create_app

    down = f"postgresql://postgres@127.0.0.1:{_closed_port()}/crm"
    app = create_app(Settings.from_env(make_env(down, redis_url, httpserver.url_for(""))))
    response = app.test_client().get("/healthz")
    assert response.status_code == 503
    assert response.json["down"] == ["database"]


def _closed_port() -> int:
    from tests.helpers import free_port

    return free_port()


def test_migrations_create_the_whole_schema(app):
    """`db upgrade` from empty (done by the fixture) matches the models exactly."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from crm.base.extensions import db

    with app.app_context():
        names = set(inspect(db.engine).get_table_names())
        assert {"contacts", "messages", "flows", "flow_sessions", "alembic_version"} <= names
        with db.engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), db.metadata)
        assert diff == []


def test_queues(app):
    queues = app.extensions["queues"]
    assert set(queues) == {"high", "default", "low"}


def test_procfile_processes():
    lines = dict(line.split(":", 1) for line in (ROOT / "Procfile").read_text().splitlines() if line.strip())
    assert lines["release"].strip() == "flask --app wsgi db upgrade"
    assert lines["web"].strip() == "python -m crm.app.server"  # Granian on $PORT, sized from the machine
    assert lines["worker"].split()[-2:] == ["high", "default"]
    assert lines["football"].split()[-1] == "low" and "high" not in lines["football"]
    assert lines["scheduler"].strip().startswith("python scheduler.py")


def test_a_web_workers_startup_objects_are_out_of_the_collectors_reach(sqlite_url, redis_url):
    """crm.app.worker.settle: the app a web worker builds is frozen (gc.freeze), so the garbage
    collector's full collections walk only what requests allocate."""
    import os
    import subprocess
    import sys

    code = ("import gc\nfrom crm.app.server import web_app\nbefore = gc.get_freeze_count()\nweb_app()\n"
            "print(before, gc.get_freeze_count())")
    env = {**os.environ, "DATABASE_URL": sqlite_url, "REDIS_URL": redis_url, "METRICS_PUSH_SECONDS": "0"}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=60)
    before, after = map(int, out.stdout.split())
    assert before == 0 and after > 10_000, out.stderr[-2000:]


def test_web_server_settings_come_from_the_environment():
    from crm.app.server import options

    conf = options({})
    assert (conf["port"], conf["address"], conf["log_access"], conf["factory"]) == (8000, "0.0.0.0", False, True)
    conf = options({"PORT": "5001", "WEB_CONCURRENCY": "3", "WEB_ACCESS_LOG": "1", "WEB_HOST": "127.0.0.1"})
    assert (conf["port"], conf["address"], conf["workers"], conf["log_access"]) == (5001, "127.0.0.1", 3, True)


def test_worker_refuses_football_with_replies():
    from crm.app.worker import main

    with pytest.raises(SystemExit):
        main(["high", "low"])


def test_scheduled_jobs_registered_once(app):
    from rq_scheduler import Scheduler

    import scheduler as sched

    s = Scheduler(connection=app.extensions["redis"], interval=5)
    first = sched.register(s, app)
    for _ in range(3):  # restarts and a second scheduler process
        sched.register(Scheduler(connection=app.extensions["redis"], interval=5), app)
    jobs = {j.id: j for j in s.get_jobs()}
    assert sorted(jobs) == first
    cleanup = jobs["crm-sessions-cleanup"]
    assert cleanup.meta["cron_string"] == "*/5 * * * *"
    assert cleanup.func_name == "crm.replies.expiry.cleanup_job"
    assert cleanup.origin == "low"
    assert jobs["crm-recover-stalled"].origin == "default"


def test_scheduler_drops_removed_schedules(app):
    from rq_scheduler import Scheduler

    import scheduler as sched

    s = Scheduler(connection=app.extensions["redis"], interval=5)
    sched.quiet_crontab_warning()  # s.cron calls rq-scheduler directly, before register() does this
    s.cron("* * * * *", func="crm.replies.contact.recover_stalled", id="crm-old-job", queue_name="default")
    sched.register(s, app)
    assert "crm-old-job" not in {j.id for j in s.get_jobs()}


def test_env_example_documents_every_variable():
    import re

    documented = set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]+)=", (ROOT / ".env.example").read_text(), re.M))
    from crm.base.config import Settings

    used = {name.upper() for name in Settings.__dataclass_fields__}
    assert len(used) > 15
    assert used <= documented, used - documented
