"""Idle sessions expire once, the user is told, and races with new messages are safe."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from sqlalchemy import select

from crm.base.extensions import db
from crm.base.models import Message, utcnow
from crm.replies.expiry import expire_idle_sessions
from flows.models import FlowSession
from tests.helpers import envelope, import_examples, message, post_webhook, run_worker, say

QUIET = """
name: quiet
triggers: {keywords: [quiet]}
settings: {expired_message: null}
steps:
  - {id: q, type: question, text: "Say something", expect: text}
  - {id: e, type: end, text: done}
"""
OWN = """
name: own
triggers: {keywords: [own]}
settings: {idle_minutes: 2, expired_message: "Own flow timed out."}
steps:
  - {id: q, type: question, text: "Say something", expect: text}
  - {id: e, type: end, text: done}
"""
GLOBAL_TEXT = "Your session has expired due to inactivity. Please send 'menu' to start over."


@pytest.fixture
def xapp(app):
    import_examples(app, QUIET, OWN)
    return app




def session_of(app, wa_id):
    from crm.base.models import Contact

    with app.app_context():
        return db.session.execute(
            select(FlowSession).join(Contact, Contact.id == FlowSession.contact_id)
            .where(Contact.wa_id == wa_id).order_by(FlowSession.id.desc())).scalars().first()


def expire_at(app, minutes_from_now):
    with app.app_context():
        return expire_idle_sessions(now=utcnow() + timedelta(minutes=minutes_from_now))


def test_threshold_global_notice_and_once(xapp, graph):
    say(xapp, "10", "signup")
    assert expire_at(xapp, 14.9)["expired"] == 0
    assert session_of(xapp, "10").status == "active"
    summary = expire_at(xapp, 15.1)
    assert summary == {**summary, "expired": 1, "notices": 0} or summary["notices"] == 1
    assert session_of(xapp, "10").status == "expired"
    run_worker(xapp)
    assert graph.texts("10")[-1] == "Your sign-up was not finished. Send 'signup' to try again."
    assert expire_at(xapp, 60)["expired"] == 0  # a second run sends nothing
    run_worker(xapp)
    assert len(graph.texts("10")) == 2


def test_global_text_per_flow_text_and_none(xapp, graph):
    say(xapp, "20", "hi")  # welcome: global text
    say(xapp, "21", "own")  # own text, 2 minutes
    say(xapp, "22", "quiet")  # no notice
    assert expire_at(xapp, 2.5)["expired"] == 1
    summary = expire_at(xapp, 16)
    assert summary["expired"] == 2 and summary["notices"] == 1
    run_worker(xapp)
    assert graph.texts("20")[-1] == GLOBAL_TEXT
    assert graph.texts("21")[-1] == "Own flow timed out."
    assert graph.texts("22") == ["Say something"]


def test_handover_sessions_are_not_expired(xapp, graph):
    say(xapp, "30", "agent")
    say(xapp, "30", "my order is late")
    assert session_of(xapp, "30").status == "handover"
    assert expire_at(xapp, 600)["expired"] == 0


def test_overlapping_runs_expire_once(xapp, graph):
    for i in range(30):
        say(xapp, f"4{i:02d}", "hi")
    results = []

    def run():
        results.append(expire_at(xapp, 20)["expired"])

    threads = [threading.Thread(target=run) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(results) == 30
    run_worker(xapp)
    with xapp.app_context():
        notices = db.session.execute(select(Message).where(Message.origin == "expiry")).scalars().all()
        assert len(notices) == 30 and all(n.status == "sent" for n in notices)


def test_message_racing_the_cleanup(xapp, graph):
    """The cleanup commits between the flow job's read and write: the job redoes its turn fresh,
    and the notice goes out before the reply to the newer message."""
    from crm.replies import turns as jobs

    say(xapp, "50", "signup")
    original = jobs.actions
    calls = []

    def cleanup_in_the_middle():
        if not calls:
            calls.append(1)
            app2_ctx = xapp.app_context()
            # a different connection/session commits the expiry while the turn is in flight
            with app2_ctx:
                db.session.remove()
                expire_idle_sessions(now=utcnow() + timedelta(minutes=20))
        return original()

    jobs.actions = cleanup_in_the_middle
    try:
        post_webhook(xapp.test_client(), envelope([message("50", body="hi")]))
        run_worker(xapp)
    finally:
        jobs.actions = original
    texts = graph.texts("50")
    assert texts[-2] == "Your sign-up was not finished. Send 'signup' to try again."
    assert texts[-1].startswith("Hello Ana!")  # handled as a fresh conversation, after the notice
    with xapp.app_context():
        statuses = [s.status for s in db.session.execute(select(FlowSession).order_by(FlowSession.id)).scalars()]
        assert statuses == ["expired", "active"]


def test_button_of_an_expired_session_does_not_resume_it(xapp, graph):
    say(xapp, "60", "own")
    expire_at(xapp, 3)
    run_worker(xapp)
    say(xapp, "60", "anything at all")  # not an answer to the expired question: the catch-all answers
    assert graph.texts("60")[-2:] == ["Own flow timed out.", "Hello Ana! 👋 What would you like to do?"]
    with xapp.app_context():
        rows = db.session.execute(select(FlowSession.flow_name, FlowSession.status)
                                  .order_by(FlowSession.id)).all()
    assert [tuple(r) for r in rows] == [("own", "expired"), ("welcome", "active")]


def test_cli_expire_and_list(xapp, graph):
    say(xapp, "70", "hi")
    runner = xapp.test_cli_runner()
    listed = runner.invoke(args=["sessions", "list"])
    assert "70" in listed.output and "welcome" in listed.output and "1 open session" in listed.output
    with xapp.app_context():
        db.session.execute(db.update(FlowSession).values(expires_at=utcnow() - timedelta(seconds=1)))
        db.session.commit()
    first = runner.invoke(args=["sessions", "expire"])
    assert "expired 1 session(s), queued 1 notice(s)" in first.output
    second = runner.invoke(args=["sessions", "expire"])
    assert "expired 0 session(s)" in second.output


def test_cleanup_logs_start_and_summary(xapp, caplog):
    caplog.set_level("INFO", logger="crm.replies.expiry")
    expire_at(xapp, 0)
    lines = [r.getMessage() for r in caplog.records if r.name == "crm.replies.expiry"]
    assert lines[0].startswith("[Idle Conversation Cleanup] Running task for conversations idle since ")
    assert "session(s) expired" in lines[-1]
