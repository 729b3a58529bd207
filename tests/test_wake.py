"""One way to wake a contact: every path puts contact work on the ready list through crm.replies.wake."""

from __future__ import annotations

import ast
from datetime import timedelta

import pytest
from sqlalchemy import func, select

from crm.base import keys
from crm.base.extensions import db, get_queue
from crm.base.models import Contact, Message, utcnow
from crm.replies.wake import CONTACT_TASK, finish, wake, wake_many
from football.models import Fixture, League, Team, TeamFollow
from tests.helpers import ROOT, envelope, import_examples, message, post_webhook, run_worker

SOURCES = [p for d in ("crm", "flows", "football", "integrations") for p in (ROOT / d).rglob("*.py")]
SOURCES.append(ROOT / "scheduler.py")


def test_only_the_wake_module_enqueues_contact_work():
    """A second path to the contact task (a plain enqueue, an inline call) fails this test."""
    offenders = []
    for path in SOURCES:
        rel = path.relative_to(ROOT).as_posix()
        if rel in ("crm/replies/wake.py", "crm/replies/contact.py", "crm/base/keys.py"):
            continue
        # The exceptions, on purpose: the reply worker serves what it pops off the ready list,
        # and the flow simulator answers its own test contact inside the request
        # (serve_contact), so the page shows the bot's answer at once.
        allowed = {"crm/app/simulator/runs.py": {"serve_contact"},
                   "crm/app/worker.py": {"serve_ready", "READY"}}.get(rel, set())
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            name = getattr(node, "id", None) or getattr(node, "attr", None) or ""
            if isinstance(node, ast.alias):
                name = node.name
            if name in {"run_contact", "serve_contact", "serve_ready", "CONTACT_TASK", "READY"} - allowed:
                offenders.append(f"{rel}:{node.lineno}")
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and "run_contact" in node.value:
                offenders.append(f"{rel}:{node.lineno}")
    assert offenders == [], "contact work must be enqueued through crm.replies.wake: " + ", ".join(offenders)


def test_wake_puts_each_contact_on_the_ready_list_once(app):
    with app.app_context():
        redis = app.extensions["redis"]
        assert wake(7) is True
        assert wake(7) is False  # already there: the server looks at the inbox when it serves it
        assert wake_many([7, 8, 9, 8]) == [8, 9]
        assert redis.lrange(keys.READY, 0, -1) == [b"7", b"8", b"9"]  # in the order woken
        assert get_queue(keys.HIGH).count == 0  # no RQ job per wake
        assert redis.ttl(keys.queued(8)) > 0  # a crash after the pop: the marker expires


def test_a_wake_while_the_contact_is_queued_or_served_makes_its_server_look_again(app):
    """The server skips its last inbox query unless a wake came meanwhile (or more was waiting)."""
    from crm.base.locks import ContactLock

    with app.app_context():
        redis = app.extensions["redis"]
        assert wake(5)
        lock = ContactLock(redis, 5)
        assert lock.acquire()
        assert finish(5, lock.token) is False  # nothing came: no need to look again
        assert redis.get(keys.queued(5)) is None and redis.get(keys.contact_lock(5)) is None
        assert wake(5) and lock.acquire()
        assert wake(5) is False  # a message stored while the contact is served
        assert finish(5, lock.token) is True and redis.get(keys.rewake(5)) is None
        other = ContactLock(redis, 5)
        assert other.acquire()
        assert finish(5, lock.token) is False  # not our lock any more: left alone
        assert redis.get(keys.contact_lock(5)) == other.token.encode()
        assert finish(5, None) is False  # found busy: the holder is told to look again
        assert finish(5, other.token) is True and redis.get(keys.contact_lock(5)) is None


def test_a_served_contact_goes_back_on_the_ready_list_in_the_round_trip_that_frees_it(app):
    """``finish`` with ``ALWAYS`` or ``IF_WOKEN``: back of the ready list, its marker kept (a
    wake meanwhile pushes no second entry), the lock freed, in one script."""
    from crm.base.locks import ContactLock
    from crm.replies.wake import ALWAYS, IF_WOKEN

    with app.app_context():
        redis = app.extensions["redis"]

        def served(contact_id: int) -> ContactLock:
            assert wake(contact_id)
            assert redis.lpop(keys.READY) == str(contact_id).encode()
            lock = ContactLock(redis, contact_id)
            assert lock.acquire()
            return lock

        lock = served(6)
        assert finish(6, lock.token, IF_WOKEN) is False  # nobody wrote meanwhile: freed, not queued
        assert redis.lrange(keys.READY, 0, -1) == [] and redis.get(keys.queued(6)) is None
        lock = served(6)
        assert wake(6) is False  # a message stored during the turn
        assert finish(6, lock.token, IF_WOKEN) is True
        assert redis.lrange(keys.READY, 0, -1) == [b"6"] and redis.get(keys.queued(6)) is not None
        assert redis.get(keys.contact_lock(6)) is None and redis.get(keys.rewake(6)) is None
        assert wake(6) is False and redis.lrange(keys.READY, 0, -1) == [b"6"]  # queued once
        redis.delete(keys.READY, keys.queued(6), keys.rewake(6))
        lock = served(7)
        assert finish(7, lock.token, ALWAYS) is False  # more was waiting: queued whatever came
        assert redis.lrange(keys.READY, 0, -1) == [b"7"] and redis.get(keys.queued(7)) is not None


def test_the_round_trip_that_frees_a_contact_takes_the_next_one_locked(app, caplog):
    """``finish`` with a ``next_lock``: the next ready contact is popped and locked with that
    lock's token in the same script (its marker kept: it is being served); one found locked is
    left to its holder (marker cleared, told to look again) and the one after it taken; an entry
    that is no contact id is dropped with a log line; an empty list takes nothing."""
    from crm.base.locks import ContactLock
    from crm.replies.wake import ALWAYS

    with app.app_context():
        redis = app.extensions["redis"]
        wake_many([11, 12, 13])
        assert redis.lpop(keys.READY) == b"11"
        lock = ContactLock(redis, 11)
        assert lock.acquire()
        holder = ContactLock(redis, 12)
        assert holder.acquire()  # an operator's action on 12
        following = ContactLock(redis, None)
        assert finish(11, lock.token, ALWAYS, following) is False
        assert following.contact_id == 13 and following.key == keys.contact_lock(13)
        assert redis.get(keys.contact_lock(13)) == following.token.encode()
        assert 0 < redis.pttl(keys.contact_lock(13)) <= keys.LOCK_TTL_MS
        assert redis.get(keys.queued(13)) is not None  # being served
        assert redis.get(keys.queued(12)) is None and redis.get(keys.rewake(12)) is not None  # busy: look again
        assert redis.get(keys.contact_lock(11)) is None
        assert redis.lrange(keys.READY, 0, -1) == [b"11"]  # ALWAYS: back of the list, behind 13
        following.extend(force=True)  # the lock is really ours
        assert finish(13, following.token, next_lock=(last := ContactLock(redis, None))) is False
        assert last.contact_id == 11 and redis.lrange(keys.READY, 0, -1) == []
        assert finish(11, last.token, next_lock=(none := ContactLock(redis, None))) is False
        assert none.contact_id is None  # nothing was waiting
        redis.rpush(keys.READY, b"not-a-contact", b"14")
        with caplog.at_level("ERROR"):
            assert finish(14, None, next_lock=(odd := ContactLock(redis, None))) is False
        assert odd.contact_id is None and "not a contact id" in caplog.text
        assert redis.lrange(keys.READY, 0, -1) == [b"14"] and redis.keys(f"{keys.CONTACT_LOCK_PREFIX}not*") == []
        redis.delete(keys.READY)
        redis.rpush(keys.READY, b"015")  # an id written otherwise: the contact's own lock all the same
        assert finish(14, None, next_lock=(padded := ContactLock(redis, None))) is False
        assert padded.contact_id == 15 and redis.get(keys.contact_lock(15)) == padded.token.encode()


def test_a_taken_contact_that_will_not_be_served_is_handed_back(app):
    """A reply thread asked to stop after ``finish`` took the next contact gives it back: its lock
    released and its id at the front of the ready list, its marker kept (queued once)."""
    from crm.base.locks import ContactLock
    from crm.replies.wake import hand_back

    with app.app_context():
        redis = app.extensions["redis"]
        wake_many([21, 22])
        assert redis.lpop(keys.READY) == b"21"
        lock = ContactLock(redis, 21)
        assert lock.acquire()
        assert finish(21, lock.token, next_lock=(taken := ContactLock(redis, None))) is False
        assert taken.contact_id == 22
        hand_back(taken)
        assert redis.get(keys.contact_lock(22)) is None
        assert redis.lrange(keys.READY, 0, -1) == [b"22"] and redis.get(keys.queued(22)) is not None
        assert wake(22) is False and redis.lrange(keys.READY, 0, -1) == [b"22"]


def test_a_wake_at_a_later_time_is_an_rq_job_for_then(app):
    with app.app_context():
        redis = app.extensions["redis"]
        assert wake(7, at=utcnow() + timedelta(seconds=30))
        assert redis.llen(keys.READY) == 0 and redis.get(keys.queued(7)) is None  # blocks no earlier wake
        scheduled = get_queue(keys.HIGH).scheduled_job_registry.get_job_ids()
        assert len(scheduled) == 1
        job = get_queue(keys.HIGH).fetch_job(scheduled[0])
        assert job.func_name == CONTACT_TASK and job.args == (7,)
        assert wake(7) is True  # now: the ready list


def test_the_reply_worker_serves_the_ready_list_in_order_and_leaves_jobs_to_rq(app, graph):
    """Contacts are served in the order they were woken; an RQ job on ``high`` still runs."""
    import_examples(app)
    with app.app_context():
        redis = app.extensions["redis"]
    for wa_id in ("504", "501", "502", "503"):
        assert post_webhook(app.test_client(), envelope([message(wa_id, body="hi")])).status_code == 200
    with app.app_context():
        first = int(redis.lpop(keys.READY))  # 504's wake becomes a due retry: an RQ job
        redis.delete(keys.queued(first))
        get_queue(keys.HIGH).enqueue(CONTACT_TASK, first)
        assert redis.llen(keys.READY) == 3
    run_worker(app)
    assert [b["to"] for b in graph.sent] == ["501", "502", "503", "504"]  # the ready list first
    with app.app_context():
        assert redis.llen(keys.READY) == 0 and get_queue(keys.HIGH).count == 0
        assert all(redis.get(keys.queued(c)) is None for c in range(1, 5))


def test_a_ready_list_entry_that_is_not_a_contact_is_dropped_and_the_worker_goes_on(app, graph, caplog):
    import_examples(app)
    with app.app_context():
        redis = app.extensions["redis"]
        redis.rpush(keys.READY, b"not-a-contact")
    assert post_webhook(app.test_client(), envelope([message("505", body="hi")])).status_code == 200
    run_worker(app)  # the main thread's pop (ReadyQueue); the threads' pop shares ready_contact
    assert [b["to"] for b in graph.sent] == ["505"]
    assert any(getattr(r, "event", None) == "worker.bad_ready_item" for r in caplog.records)


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
    """500 followers are 500 entries on the ready list, each in order with that contact's own
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
        ready = [int(c) for c in app.extensions["redis"].lrange(keys.READY, 0, -1)]
        assert sorted(ready) == sorted(c.id for c in fans)
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


def test_a_wake_during_a_turn_whose_send_waits_for_a_retry_requeues_nothing(app, graph):
    """The retry is scheduled for its time; a wake that came while the contact was queued (as
    a stored message's would) finds nothing due and puts no second serve on the list."""
    from crm.replies.contact import serve_contact

    import_examples(app)
    graph.fail_to["506"] = (500, {"error": {"code": 131000, "message": "Something went wrong"}})
    assert post_webhook(app.test_client(), envelope([message("506", body="hi")])).status_code == 200
    with app.app_context():
        redis = app.extensions["redis"]
        contact_id = int(redis.lpop(keys.READY))  # what a reply worker pops
        assert wake(contact_id) is False  # a wake while it is queued: its server must look again
        assert serve_contact(contact_id) == "done"
        assert redis.llen(keys.READY) == 0  # looked, found the retry not due yet: not requeued
        assert len(get_queue(keys.HIGH).scheduled_job_registry.get_job_ids()) == 1  # the retry, once
        outbound = db.session.execute(select(Message.status, Message.attempts).where(
            Message.contact_id == contact_id, Message.direction == "out")).one()
        assert outbound.status == "queued" and outbound.attempts == 1


def test_a_wake_during_a_settled_turn_requeues_the_contact_without_a_look(app, graph):
    """A message stored while the contact was served: back of the ready list at once."""
    from crm.replies.contact import serve_contact

    import_examples(app)
    assert post_webhook(app.test_client(), envelope([message("507", body="hi")])).status_code == 200
    with app.app_context():
        redis = app.extensions["redis"]
        contact_id = int(redis.lpop(keys.READY))
        assert wake(contact_id) is False
        assert serve_contact(contact_id) == "requeued"
        assert redis.lrange(keys.READY, 0, -1) == [str(contact_id).encode()]
    run_worker(app)  # the next server finds nothing to answer and leaves it at that
    assert len(graph.sent) == 1
    with app.app_context():
        assert redis.llen(keys.READY) == 0
