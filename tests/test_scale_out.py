"""Scale-out: two worker pools (as two worker dynos) on one PostgreSQL and one Redis.

Every contact's replies come in the order its messages were sent and none twice, however the
jobs spread over the two pools' processes. PostgreSQL only (SQLite is one machine's file):
skipped without a server, except under CI=true, where a missing PostgreSQL is a failure.
"""

from __future__ import annotations

import os
import signal
import time

import pytest
from sqlalchemy import func, select

from crm.base.extensions import db
from crm.base.models import Message
from tests.conftest import POSTGRES
from tests.helpers import COUNTING_ECHO, envelope, import_examples, message, post_webhook, spawn_workers, wait_for

pytestmark = pytest.mark.slow

CONTACTS, MESSAGES = 20, 10


@pytest.fixture
def database_url(request):
    """This module runs on PostgreSQL only."""
    if not POSTGRES:
        if os.environ.get("CI") == "true":
            pytest.fail("the scale-out test needs PostgreSQL (TEST_POSTGRES_URL) under CI")
        pytest.skip("no PostgreSQL")
    return request.getfixturevalue("postgres_database")


def parent_of(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except OSError:
        return None


def test_two_worker_pools_keep_each_contacts_order_and_answer_once(make_app, graph, tmp_path):
    from rq import Worker

    app = make_app(LOG_LEVEL="DEBUG")  # each turn logs one line (flow.turn): the pools' logs tell who served
    import_examples(app, COUNTING_ECHO)
    redis = app.extensions["redis"]
    logs = [open(tmp_path / f"pool{i}.log", "w+") for i in range(2)]  # noqa: SIM115 - closed below
    pools = [spawn_workers(app, 1, burst=False, processes=2, stderr=log)[0] for log in logs]
    try:
        assert wait_for(lambda: len(Worker.all(connection=redis)) == 4, 60), "the pools did not start"
        client = app.test_client()
        contacts = [f"26377{c:04d}" for c in range(CONTACTS)]
        for i in range(MESSAGES):  # every round while the pools are answering the previous ones
            for wa_id in contacts:
                response = post_webhook(client, envelope([message(wa_id, body=f"m{i}")]))
                assert response.status_code == 200
        assert wait_for(lambda: len(graph.sent) >= CONTACTS * MESSAGES, 120), f"{len(graph.sent)} sent"
        time.sleep(1.0)  # a duplicate would arrive now
        assert {parent_of(w.pid) for w in Worker.all(connection=redis)} == {p.pid for p in pools}
    finally:
        for proc in pools:
            proc.send_signal(signal.SIGTERM)
        codes = [proc.wait(60) for proc in pools]
        turns_by_pool = []
        for log in logs:
            log.seek(0)
            text = log.read()
            log.close()
            assert "Traceback" not in text, text[-3000:]
            turns_by_pool.append(text.count('"event": "flow.turn"'))
    assert codes == [0, 0]
    for wa_id in contacts:
        assert graph.texts(wa_id) == [f"echo m{i} #{i + 1}" for i in range(MESSAGES)], wa_id
    assert len(graph.sent) == CONTACTS * MESSAGES  # none twice
    assert sum(turns_by_pool) == CONTACTS * MESSAGES and all(turns_by_pool), turns_by_pool  # both pools served
    with app.app_context():
        assert db.session.execute(select(func.count()).select_from(Message).where(
            Message.direction == "in", Message.processed_at.is_(None))).scalar_one() == 0
        statuses = db.session.execute(select(Message.status, func.count()).where(
            Message.direction == "out").group_by(Message.status)).all()
        assert dict(statuses) == {"sent": CONTACTS * MESSAGES}
