"""The reply path: webhook -> high queue -> engine -> ordered, retried delivery."""

from __future__ import annotations

import signal
import time
from datetime import timedelta

import pytest
from sqlalchemy import func, select

from crm.base.extensions import db
from crm.base.models import Contact, Message, utcnow
from integrations.whatsapp import messages as wa
from tests.helpers import (
    COUNTING_ECHO,
    envelope,
    import_examples,
    message,
    post_webhook,
    run_worker,
    spawn_workers,
    terminate,
    wait_for,
)

TWO = """
name: two
triggers: {keywords: [two]}
steps:
  - {id: s, type: send, messages: ["first", "second"]}
"""


@pytest.fixture
def echo_app(app):
    import_examples(app, COUNTING_ECHO, TWO)
    return app


def send(app, wa_id, text, wamid=None):
    response = post_webhook(app.test_client(), envelope([message(wa_id, body=text, wamid=wamid)]))
    assert response.status_code == 200


def test_reply_read_receipt_and_rows(echo_app, graph):
    send(echo_app, "100", "hi")
    run_worker(echo_app)
    assert graph.texts("100") == ["Hello Ana! 👋 What would you like to do?"]
    receipts = [r["body"] for r in graph.requests if r["body"].get("status") == "read"]
    assert len(receipts) == 1 and receipts[0]["message_id"].startswith("wamid.in.")
    assert graph.requests[0]["auth"] == "Bearer graph-token-for-tests"
    with echo_app.app_context():
        out = db.session.execute(select(Message).where(Message.direction == "out")).scalar_one()
        assert out.status == "sent" and out.wa_message_id.startswith("wamid.out.") and out.callback_id
        inbound = db.session.execute(select(Message).where(Message.direction == "in")).scalar_one()
        assert inbound.processed_at is not None


def test_two_messages_of_a_turn_in_order(echo_app, graph):
    send(echo_app, "101", "two")
    run_worker(echo_app)
    assert graph.texts("101") == ["first", "second"]
    with echo_app.app_context():  # the time to reply is on the turn's first reply, written with its send
        rows = db.session.execute(select(Message.direction, Message.text, Message.reply_ms).order_by(Message.id)).all()
    assert [(d, t) for d, t, _ms in rows] == [("in", "two"), ("out", "first"), ("out", "second")]
    assert rows[0].reply_ms is None and rows[1].reply_ms > 0 and rows[2].reply_ms is None


def test_one_contact_twenty_messages_several_workers(echo_app, graph):
    for i in range(1, 21):
        send(echo_app, "200", f"m{i}")
    procs = spawn_workers(echo_app, 3)
    for p in procs:
        assert p.wait(60) == 0, p.stderr.read().decode()[-2000:]
    assert graph.texts("200") == [f"echo m{i} #{i}" for i in range(1, 21)]


def test_a_busy_contact_cannot_hold_the_worker(echo_app, graph):
    """One ready-list entry per contact at a time, one turn each time it is served: a contact with many waiting messages
    goes to the back of the queue after each reply, so others are answered in between."""
    from crm.base import keys

    for i in range(1, 6):
        send(echo_app, "300", f"a{i}")
    send(echo_app, "301", "b1")
    with echo_app.app_context():
        assert echo_app.extensions["redis"].llen(keys.READY) == 2  # once per contact, not once per message
    run_worker(echo_app)
    order = [(r["body"]["to"], r["body"]["text"]["body"]) for r in graph.requests if r["body"].get("type") == "text"]
    assert order[:3] == [("300", "echo a1 #1"), ("301", "echo b1 #1"), ("300", "echo a2 #2")]
    assert graph.texts("300") == [f"echo a{i} #{i}" for i in range(1, 6)]


def test_fifty_contacts_ten_messages_exactly_once(echo_app, graph):
    for i in range(10):
        for c in range(50):
            send(echo_app, f"3{c:03d}", f"m{i}")
    procs = spawn_workers(echo_app, 3)
    for p in procs:
        assert p.wait(120) == 0, p.stderr.read().decode()[-2000:]
    logs = "".join(p.stderr.read().decode()[-3000:] for p in procs)
    for c in range(50):
        assert graph.texts(f"3{c:03d}") == [f"echo m{i} #{i + 1}" for i in range(10)], logs
    assert len(graph.sent) == 500


def test_duplicate_webhook_never_replies_twice(echo_app, graph):
    send(echo_app, "400", "dup", wamid="wamid.dup")
    run_worker(echo_app)
    send(echo_app, "400", "dup", wamid="wamid.dup")
    run_worker(echo_app)
    assert graph.texts("400") == ["echo dup #1"]


def test_blocked_and_opted_out_get_no_reply_but_are_stored(echo_app, graph):
    send(echo_app, "500", "hello")
    send(echo_app, "501", "hello")
    run_worker(echo_app)
    with echo_app.app_context():
        db.session.execute(db.update(Contact).where(Contact.wa_id == "500").values(blocked=True))
        db.session.execute(db.update(Contact).where(Contact.wa_id == "501").values(opted_out=True))
        db.session.commit()
    graph.requests.clear()
    send(echo_app, "500", "again")
    send(echo_app, "501", "again")
    run_worker(echo_app)
    assert graph.sent == []
    send(echo_app, "501", "start")  # opting back in is the one thing an opted-out contact can say
    run_worker(echo_app)
    assert len(graph.texts("501")) == 1
    with echo_app.app_context():
        assert db.session.execute(select(func.count()).select_from(Message).where(
            Message.direction == "in")).scalar_one() == 5


def test_retryable_errors_keep_order_and_never_duplicate(echo_app, graph):
    graph.script = [(429, {"error": {"code": 130429, "message": "Rate limit hit"}}),
                    None,  # the read receipt
                    (500, {"error": {"code": 2, "message": "Service temporarily unavailable"}})]
    send(echo_app, "600", "two")
    run_worker(echo_app)
    assert graph.texts("600") == []
    with echo_app.app_context():
        head = db.session.execute(select(Message).where(Message.direction == "out").order_by(Message.id)).scalars()
        first, second = list(head)
        assert (first.status, first.attempts, first.error_code) == ("queued", 1, 130429)
        assert second.status == "queued" and second.attempts == 0  # later messages wait
        db.session.execute(db.update(Message).values(next_attempt_at=utcnow() - timedelta(seconds=1)))
        db.session.commit()
    from crm.replies.contact import run_contact

    with echo_app.app_context():
        contact_id = db.session.execute(select(Contact.id).where(Contact.wa_id == "600")).scalar_one()
        run_contact(contact_id)  # 500 this time, still parked
        db.session.execute(db.update(Message).values(next_attempt_at=utcnow() - timedelta(seconds=1)))
        db.session.commit()
        run_contact(contact_id)
    assert graph.texts("600") == ["first", "second"]
    assert [r["status"] for r in graph.requests if "status" not in r["body"]] == [429, 500, 200, 200]


def test_permanent_errors_fail_at_once_and_keep_codes(echo_app, graph):
    graph.script = [(400, {"error": {"code": 131026, "message": "Message undeliverable",
                                     "error_data": {"details": "Recipient cannot receive"}}})]
    send(echo_app, "700", "two")
    run_worker(echo_app)
    assert graph.texts("700") == ["second"]
    with echo_app.app_context():
        first = db.session.execute(select(Message).where(Message.direction == "out").order_by(Message.id)).scalars()
        first = next(iter(first))
        assert (first.status, first.attempts, first.error_code, first.error_details) == (
            "failed", 1, 131026, "Recipient cannot receive")


def test_timeout_waits_for_status_before_resending(echo_app, graph):
    graph.script = ["timeout"]
    send(echo_app, "800", "hi")
    run_worker(echo_app)
    with echo_app.app_context():
        out = db.session.execute(select(Message).where(Message.direction == "out")).scalar_one()
        assert out.status == "sending" and out.next_attempt_at > utcnow() + timedelta(seconds=10)
        callback = out.callback_id
    # Meta did accept it: its status webhook arrives with our callback data.
    post_webhook(echo_app.test_client(), envelope(statuses=[{
        "id": "wamid.accepted", "status": "sent", "timestamp": str(int(time.time())), "recipient_id": "800",
        "biz_opaque_callback_data": callback}]))
    with echo_app.app_context():
        db.session.execute(db.update(Message).values(next_attempt_at=utcnow() - timedelta(seconds=1)))
        db.session.commit()
        from crm.replies.contact import run_contact

        run_contact(db.session.execute(select(Contact.id).where(Contact.wa_id == "800")).scalar_one())
    sends = [r for r in graph.requests if "status" not in r["body"]]
    assert len(sends) == 1  # never resent


def test_window_closed_free_form_refused_locally(echo_app, graph):
    from crm.replies.contact import run_contact
    from crm.replies.delivery import queue_outbound

    with echo_app.app_context():
        contact = Contact(wa_id="900", custom_fields={}, last_inbound_at=utcnow() - timedelta(hours=25))
        db.session.add(contact)
        db.session.flush()
        queue_outbound(contact, "100000000000001", wa.text("late hello"), "operator")
        queue_outbound(contact, "100000000000001", wa.template("hello_world"), "operator")
        db.session.commit()
        run_contact(contact.id)
        rows = db.session.execute(select(Message).order_by(Message.id)).scalars().all()
        assert rows[0].status == "failed" and "24-hour" in rows[0].error_title
        assert rows[1].status == "sent"
    assert [b["type"] for b in graph.sent] == ["template"]


def turn_under_way(redis) -> bool:
    """Popped off the ready list, the contact's lock taken: a reply worker is serving it."""
    return not redis.llen("crm:contacts:ready") and any(redis.scan_iter("crm:lock:contact:*"))


def test_sigterm_while_a_contact_is_served_finishes_its_turn(make_app, graph):
    """A deploy stops the reply worker while it is serving a contact off the ready list (the
    reply is on its way to a slow Graph API): the turn ends, the reply goes once, then it exits."""
    app = make_app(WHATSAPP_READ_TIMEOUT=5)
    import_examples(app, COUNTING_ECHO, TWO)
    graph.script = ["timeout"]  # the first send is answered after 1.5 s
    (proc,) = spawn_workers(app, 1, burst=False)
    redis = app.extensions["redis"]
    try:
        send(app, "960", "slow")
        assert wait_for(lambda: turn_under_way(redis), 20)
        time.sleep(0.3)  # inside the send
    finally:
        code = terminate(proc)
    assert code == 0
    assert graph.texts("960") == ["echo slow #1"]
    with app.app_context():
        rows = db.session.execute(select(Message.direction, Message.status, Message.processed_at)
                                  .order_by(Message.id)).all()
        assert [(r.direction, r.status) for r in rows] == [("in", "received"), ("out", "sent")]
        assert rows[0].processed_at is not None
        assert not any(redis.scan_iter("crm:lock:contact:*")) and not any(redis.scan_iter("crm:queued:*"))


def test_worker_killed_mid_job_loses_nothing(echo_app, graph):
    """A worker dies in the middle of a turn: after its lock expires, recovery processes the message once."""
    send(echo_app, "950", "yo")
    with echo_app.app_context():
        engine = db.engine
    blocker = engine.connect()
    # Hold the database so that the worker's turn is stuck inside its transaction.
    if engine.dialect.name == "sqlite":
        blocker.exec_driver_sql("BEGIN IMMEDIATE")
    else:
        blocker.exec_driver_sql("BEGIN")
        blocker.exec_driver_sql("LOCK TABLE flow_sessions IN ACCESS EXCLUSIVE MODE")
    (proc,) = spawn_workers(echo_app, 1, burst=False)
    redis = echo_app.extensions["redis"]
    try:
        assert wait_for(lambda: turn_under_way(redis), 20)
        time.sleep(0.5)
    finally:  # killed mid-turn (and never left running, whatever failed above)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        blocker.rollback()
        blocker.close()
    assert graph.sent == []
    # nothing of the killed worker listens any more: RQ's scheduler process, forked from it,
    # holds copies of its BLPOP connections and dies with it (else Redis would hand the woken
    # contact to a reader that is gone)
    blocked = lambda: [c for c in echo_app.extensions["redis"].client_list() if c["cmd"] == "blpop"]  # noqa: E731
    assert wait_for(lambda: not blocked(), 10), blocked()
    with echo_app.app_context():
        from crm.replies import recovery as jobs

        redis = echo_app.extensions["redis"]
        for pattern in ("crm:lock:contact:*", "crm:queued:contact:*"):  # as when their TTLs run out
            for key in redis.scan_iter(pattern):
                redis.delete(key)
        db.session.execute(db.update(Message).values(created_at=utcnow() - timedelta(minutes=5)))
        db.session.commit()
        assert jobs.recover_stalled() == 1
    run_worker(echo_app)
    assert graph.texts("950") == ["echo yo #1"]
    with echo_app.app_context():
        rows = db.session.execute(select(Message).where(Message.direction == "out")).scalars().all()
        assert len(rows) == 1 and rows[0].status == "sent"
