"""One way to wake a contact: every path enqueues contact work through crm.replies.wake."""

from __future__ import annotations

import ast
from datetime import timedelta

import pytest
from sqlalchemy import func, select

from crm.base import keys
from crm.base.extensions import db, get_queue
from crm.base.models import Contact, Message, utcnow
from crm.replies.wake import CONTACT_TASK, wake, wake_many
from football.models import Fixture, League, Team, TeamFollow
from tests.helpers import ROOT, envelope, message, post_webhook, run_worker

SOURCES = [p for d in ("crm", "flows", "football", "integrations") for p in (ROOT / d).rglob("*.py")]
SOURCES.append(ROOT / "scheduler.py")


def test_only_the_wake_module_enqueues_contact_work():
    """A second path to the contact task (a plain enqueue, an inline call) fails this test."""
    offenders = []
    for path in SOURCES:
        rel = path.relative_to(ROOT).as_posix()
        if rel in ("crm/replies/wake.py", "crm/replies/contact.py"):
            continue
        # The one exception, on purpose: the flow simulator answers its own test contact inside
        # the request (serve_contact), so the page shows the bot's answer at once.
        allowed = {"serve_contact"} if rel == "crm/app/simulator/runs.py" else set()
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            name = getattr(node, "id", None) or getattr(node, "attr", None) or ""
            if isinstance(node, ast.alias):
                name = node.name
            if name in {"run_contact", "serve_contact", "CONTACT_TASK"} - allowed:
                offenders.append(f"{rel}:{node.lineno}")
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and "run_contact" in node.value:
                offenders.append(f"{rel}:{node.lineno}")
    assert offenders == [], "contact work must be enqueued through crm.replies.wake: " + ", ".join(offenders)


def test_wake_queues_one_task_per_contact(app):
    with app.app_context():
        assert wake(7) is True
        assert wake(7) is False  # already queued: the task looks at the inbox when it runs
        assert wake_many([7, 8, 9, 8]) == [8, 9]
        jobs = get_queue(keys.HIGH).get_jobs()
        assert sorted(j.args[0] for j in jobs) == [7, 8, 9]
        assert {j.func_name for j in jobs} == {CONTACT_TASK}


def test_busy_task_clears_its_marker(app):
    """A task that finds the contact locked returns and frees the marker, so the lock holder's
    own wake after it releases is not swallowed."""
    from crm.base.locks import ContactLock
    from crm.replies.contact import run_contact

    with app.app_context():
        redis = app.extensions["redis"]
        holder = ContactLock(redis, 5)
        assert holder.acquire()
        assert wake(5)
        assert run_contact(5) == "busy"
        assert redis.get(keys.queued(5)) is None
        holder.release()
        assert wake(5)


@pytest.mark.slow
def test_result_notices_wake_each_follower_separately(app, graph):
    """500 followers are 500 contact tasks on `high`, each in order with that contact's own
    messages; a follower whose sends keep failing holds nobody else back."""
    from football.jobs import notify_results

    n = 500
    with app.app_context():
        league, home, away = League(provider_id="1", name="Premier League"), Team(provider_id="1", name="Arsenal"), \
            Team(provider_id="2", name="Chelsea")
        db.session.add_all([league, home, away])
        db.session.flush()
        now = utcnow()
        db.session.add(Fixture(provider_id="1", league_id=league.id, home_team_id=home.id, away_team_id=away.id,
                               kickoff_at=now - timedelta(hours=2), status="finished", status_text="Finished",
                               home_score=2, away_score=0, finished_at=now))
        fans = [Contact(wa_id=f"44{i:05d}", custom_fields={}, last_inbound_at=now) for i in range(n)]
        db.session.add_all(fans)
        db.session.flush()
        db.session.add_all([TeamFollow(contact_id=c.id, team_id=home.id) for c in fans])
        db.session.commit()
        assert notify_results() == n
        jobs = get_queue(keys.HIGH).get_jobs()
        assert len(jobs) == n and {j.func_name for j in jobs} == {CONTACT_TASK}
        assert sorted(j.args[0] for j in jobs) == sorted(c.id for c in fans)
        assert notify_results() == 0  # claimed: never twice
    poison = fans[0].wa_id
    graph.fail_to[poison] = (500, {"error": {"code": 131000, "message": "Something went wrong"}})
    # the poison follower also writes while its notice is retried: its reply waits behind the notice
    assert post_webhook(app.test_client(), envelope([message(poison, body="hi")])).status_code == 200
    run_worker(app)
    sent_to = {b["to"] for b in graph.sent}
    assert len(sent_to) == n - 1 and poison not in sent_to
    with app.app_context():
        waiting = db.session.execute(select(Message.status, Message.type, Message.attempts).where(
            Message.contact_id == fans[0].id, Message.direction == "out").order_by(Message.id)).all()
        assert [w.status for w in waiting][:1] == ["queued"] and waiting[0].attempts >= 1  # parked for a retry
        assert db.session.execute(select(func.count()).select_from(Message).where(
            Message.direction == "out", Message.status == "sent")).scalar_one() == n - 1
