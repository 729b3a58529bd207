"""Nothing jams, nothing dies: poison turns, recovery that cannot switch itself off, consent
everywhere, idle handovers, lost locks. SQLite and PostgreSQL."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
from sqlalchemy import select

from crm.base import keys
from crm.base.extensions import db, get_queue
from crm.base.locks import ContactLock, LockLost
from crm.base.models import Contact, Message, utcnow
from crm.replies.delivery import OutboxPass, queue_outbound
from crm.replies.expiry import expire_idle_sessions
from crm.replies.recovery import recover_stalled
from flows.actions import register_actions
from flows.models import FlowSession
from integrations.whatsapp import messages as wa
from tests.helpers import PNID, envelope, import_examples, message, post_webhook, run_worker, say

POISON = """
name: poison
triggers: {keywords: [poison]}
steps:
  - {id: a, type: action, action: test.poison, save_as: x}
  - {id: b, type: send, messages: ["never sent"]}
"""
AUTH = {"Authorization": "Bearer ops-token"}


def poison_action(_params, context):
    """A plugin action that misbehaves: it leaves a value no database can store in the session."""
    context["vars"]["bad"] = object()
    return "ok"


@pytest.fixture
def happ(make_app, graph):
    app = make_app(OPERATOR_API_TOKENS="ops-token")
    register_actions(app, {"test.poison": poison_action})
    import_examples(app, POISON)
    return app


def contact_of(app, wa_id):
    with app.app_context():
        return db.session.execute(select(Contact).where(Contact.wa_id == wa_id)).scalar_one()


def inbound(app, wa_id):
    with app.app_context():
        return db.session.execute(select(Message).join(Contact).where(
            Contact.wa_id == wa_id, Message.direction == "in").order_by(Message.id)).scalars().all()


def test_a_poison_message_is_set_aside_and_the_contact_moves_on(happ, graph):
    say(happ, "7001", "poison")  # fails 3 times (retried with backoff by RQ's scheduler; here: by hand)
    for _ in range(3):
        with happ.app_context():
            from crm.replies.contact import run_contact

            run_contact(contact_of(happ, "7001").id)
    first = inbound(happ, "7001")[0]
    assert first.status == "failed" and first.processed_at is not None
    assert "TypeError" in first.error_title
    apology = "Sorry, something went wrong with your last message. Send 'menu' to start again."
    assert graph.texts("7001") == [apology]
    say(happ, "7001", "menu")
    assert graph.texts("7001")[1].startswith("Hello")  # the queue moved on
    say(happ, "7001", "poison")
    for _ in range(3):
        with happ.app_context():
            from crm.replies.contact import run_contact

            run_contact(contact_of(happ, "7001").id)
    assert graph.texts("7001").count(apology) == 1  # at most one apology an hour
    # operators see it and can retry it
    client = happ.test_client()
    failed = client.get("/api/failed-messages", headers=AUTH).json["items"]
    assert [m["id"] for m in failed] == [m.id for m in inbound(happ, "7001") if m.status == "failed"][::-1]
    assert client.post(f"/api/messages/{first.id}/retry", headers=AUTH).status_code == 202
    assert client.post("/api/messages/999999/retry", headers=AUTH).status_code == 404
    assert inbound(happ, "7001")[0].status == "received"


def test_the_apology_for_a_message_set_aside_goes_out_at_once(make_app, graph):
    """Set aside on the last attempt: the apology is delivered by the next serve, at once, not
    by recovery a minute later."""
    app = make_app(TURN_MAX_ATTEMPTS="1")
    register_actions(app, {"test.poison": poison_action})
    import_examples(app, POISON)
    say(app, "7005", "poison")
    assert inbound(app, "7005")[0].status == "failed"
    assert graph.texts("7005") == ["Sorry, something went wrong with your last message. Send 'menu' to start again."]


def test_a_wake_during_a_failed_turn_waits_for_the_retry(happ, graph):
    """A message stored while a turn fails does not cut the backoff short: the retry's job
    serves the failed message and then the new one, in order."""
    from crm.replies.contact import serve_contact
    from crm.replies.wake import wake

    assert post_webhook(happ.test_client(), envelope([message("7006", body="poison")])).status_code == 200
    with happ.app_context():
        redis = happ.extensions["redis"]
        contact_id = int(redis.lpop(keys.READY))
        assert wake(contact_id) is False  # woken while queued, as a stored message would
        assert serve_contact(contact_id) == "done"  # attempt 1 failed
        assert redis.llen(keys.READY) == 0  # not served again before the backoff
        assert len(get_queue(keys.HIGH).scheduled_job_registry.get_job_ids()) == 1  # the retry
    assert inbound(happ, "7006")[0].status == "received"


def test_recovery_that_fails_does_not_stop_a_later_recovery(happ, graph):
    say(happ, "7002", "hi")
    graph.requests.clear()
    with happ.app_context():
        contact_id = contact_of(happ, "7002").id
        m = Message(contact_id=contact_id, direction="in", type="text", text="hello", phone_number_id=PNID,
                    payload={"type": "text", "text": {"body": "hello"}}, wa_message_id="wamid.stalled",
                    status="received", created_at=utcnow() - timedelta(minutes=5), attempts=0)
        db.session.add(m)
        db.session.commit()
        assert recover_stalled() == 1
        assert recover_stalled() == 0  # its task is still queued: not twice
        db.session.execute(db.text("ALTER TABLE flow_sessions RENAME TO flow_sessions_away"))
        db.session.commit()
    try:
        run_worker(happ)  # the recovered task fails (the database refuses it)
    finally:
        with happ.app_context():
            db.session.execute(db.text("ALTER TABLE flow_sessions_away RENAME TO flow_sessions"))
            db.session.commit()
    assert graph.sent == []
    with happ.app_context():
        assert happ.extensions["redis"].get(keys.queued(contact_id)) is None
        assert recover_stalled() == 1  # no job id of the failed job blocks it
    run_worker(happ)
    assert len(graph.texts("7002")) == 1
    assert inbound(happ, "7002")[-1].status == "received"  # an outage is never the message's fault


def test_stop_in_a_handover_and_as_a_button(happ, graph):
    say(happ, "7003", "agent")
    say(happ, "7003", "my order")
    texts = graph.texts("7003")
    assert texts[-1].startswith("Thanks! A person")
    say(happ, "7003", "STOP")
    assert graph.texts("7003")[-1].startswith("You will not get any more messages")
    c = contact_of(happ, "7003")
    assert c.opted_out
    with happ.app_context():
        assert db.session.execute(select(FlowSession.status).where(FlowSession.contact_id == c.id)
                                  .order_by(FlowSession.id.desc())).scalars().first() == "ended"
    # a button titled "Stop" opts out as well
    msg = message("7004", kind="interactive",
                  interactive={"type": "button_reply", "button_reply": {"id": "stop", "title": "Stop"}})
    assert post_webhook(happ.test_client(), envelope([msg])).status_code == 200
    run_worker(happ)
    assert contact_of(happ, "7004").opted_out


def test_nothing_reaches_an_opted_out_contact(happ, graph):
    say(happ, "7005", "hi")
    say(happ, "7005", "stop")
    sent_before = len(graph.sent)
    c = contact_of(happ, "7005")
    client = happ.test_client()
    answer = client.post(f"/api/contacts/{c.id}/messages", json={"type": "text", "text": "psst"}, headers=AUTH)
    assert answer.status_code == 409 and "opted out" in answer.json["error"]["message"]
    with happ.app_context():  # a row queued before the opt-out (a retry, a notice) is refused at send time
        queue_outbound(db.session.get(Contact, c.id), PNID, wa.text("late notice"), "football")
        db.session.commit()
        from crm.replies.wake import wake

        wake(c.id)
    run_worker(happ)
    assert len(graph.sent) == sent_before
    with happ.app_context():
        late = db.session.execute(select(Message).where(Message.text == "late notice")).scalar_one()
        assert late.status == "failed" and "opted out" in late.error_title
    say(happ, "7005", "start")
    assert graph.texts("7005")[-1].startswith("Welcome back")


def test_a_handover_nobody_answers_ends(happ, graph):
    say(happ, "7006", "agent")
    say(happ, "7006", "help")
    c = contact_of(happ, "7006")
    with happ.app_context():
        session = db.session.execute(select(FlowSession).where(FlowSession.contact_id == c.id,
                                                               FlowSession.status == "handover")).scalar_one()
        session.last_activity_at = utcnow() - timedelta(hours=25)
        db.session.commit()
        assert expire_idle_sessions()["handovers_ended"] == 1
        db.session.refresh(session)
        assert session.status == "ended" and session.end_reason == "handover_idle" and session.expires_at is None
    say(happ, "7006", "hi")
    assert graph.texts("7006")[-1].startswith("Hello")


def test_a_lost_lock_stops_delivery_before_it_sends(happ, graph):
    say(happ, "7007", "hi")
    graph.requests.clear()
    c = contact_of(happ, "7007")
    with happ.app_context():
        redis = happ.extensions["redis"]
        lock = ContactLock(redis, c.id, ttl_ms=50)
        assert lock.acquire()
        queue_outbound(db.session.get(Contact, c.id), PNID, wa.text("one"), "operator")
        db.session.commit()
        time.sleep(0.1)  # the holder stalled past its TTL: the lock expired ...
        assert ContactLock(redis, c.id).acquire()  # ... and another task took the contact
        with pytest.raises(LockLost):
            OutboxPass(c.id, c.wa_id, utcnow(), lock=lock).run()
    assert graph.sent == []
