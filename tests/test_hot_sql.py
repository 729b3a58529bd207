"""crm.base.hot_sql: the reply path's statements on the session connection's cursor give what
``db.session.execute`` gives (values, types, transaction, errors), on SQLite and PostgreSQL."""

from __future__ import annotations

import contextlib
import gc
import tempfile
import threading
from datetime import timedelta

import pytest
from sqlalchemy import bindparam, event, select
from sqlalchemy.exc import IntegrityError, NoResultFound, OperationalError, PendingRollbackError

from crm.base import hot_sql
from crm.base.enums import Direction, MessageStatus
from crm.base.extensions import HELD, db
from crm.base.models import Contact, Message, utcnow
from crm.replies import sessions as ss
from crm.replies.contact import _SERVE
from crm.replies.delivery import _HEAD
from crm.replies.intake import _statement, store_inbound
from crm.replies.turns import _OUTBOUND_NEW
from crm.replies.turns import CONTACT as _CONTACT
from integrations.whatsapp.inbound import parse_webhook
from tests.helpers import envelope, message

messages, contacts = Message.__table__, Contact.__table__


def _contact(**extra) -> int:
    now = utcnow()
    values = {"wa_id": "15550001", "profile_name": "Ana", "user_id": None, "custom_fields": {"city": "Lyon", "n": 2},
              "opted_out": False, "blocked": True, "is_test": False, "first_seen_at": now, "last_seen_at": now,
              "last_inbound_at": now - timedelta(minutes=3), **extra}
    return hot_sql.execute(_statement("contact"), values).scalar_one()


def _outbound(contact_id: int, **extra) -> int:
    now = utcnow()
    values = {"contact_id": contact_id, "direction": Direction.OUT, "type": "text", "text": "hé ✓",
              "payload": {"type": "text", "text": {"body": "hé ✓"}, "list": [1, 2.5, None]},
              "phone_number_id": "100", "status": MessageStatus.QUEUED, "origin": "flow", "callback_id": "cb-1",
              "flow_session_id": None, "attempts": 0, "created_at": now, "next_attempt_at": now + timedelta(seconds=5),
              **extra}
    return hot_sql.execute(_OUTBOUND_NEW, values).scalar_one()


def test_rows_are_what_the_session_reads(app):
    with app.app_context():
        contact_id = _contact()
        hot_sql.execute(ss.SESSION_NEW, {"contact_id": contact_id, "flow_name": "welcome", "flow_version": 1,
                                         "status": "active", "state": {"vars": {"a": 1}}, "started_at": utcnow(),
                                         "last_activity_at": utcnow(), "version": 1})
        _outbound(contact_id)
        db.session.commit()
        for stmt, params in ((_CONTACT, {"b_contact": contact_id}), (_SERVE, {"b_contact": contact_id}),
                             (_HEAD, {"b_contact": contact_id, "b_after": 0})):
            hot = list(hot_sql.execute(stmt, params))
            expected = list(db.session.execute(stmt, params))
            assert hot == [tuple(row) for row in expected]
            assert [row._asdict() for row in hot] == [dict(row._mapping) for row in expected]
        row = hot_sql.execute(_CONTACT, {"b_contact": contact_id}).first()
        assert row.custom_fields == {"city": "Lyon", "n": 2} and row.blocked is True and row.opted_out is False
        assert ss.session_of_contact(row) == ss.open_session_row(contact_id)  # read with the contact
        assert ss.session_of_contact(row).state == {"vars": {"a": 1}}
        assert row.last_inbound_at < utcnow() and row.last_inbound_at.tzinfo is None
        head = hot_sql.execute(_HEAD, {"b_contact": contact_id, "b_after": 0}).first()
        assert head.payload == {"type": "text", "text": {"body": "hé ✓"}, "list": [1, 2.5, None]}
        assert head.next_attempt_at > utcnow()


def test_writes_belong_to_the_sessions_transaction(app):
    with app.app_context():
        contact_id = _contact()
        db.session.rollback()
        assert db.session.execute(select(Contact.id).where(Contact.id == contact_id)).first() is None
        contact_id = _contact()
        db.session.commit()
        assert db.session.get(Contact, contact_id).profile_name == "Ana"


def test_orm_changes_waiting_for_a_flush_are_flushed_first(app):
    with app.app_context():
        db.session.add(Contact(wa_id="15550009", profile_name="Bo"))
        row = hot_sql.execute(select(contacts.c.id).where(contacts.c.wa_id == bindparam("b_wa")),
                              {"b_wa": "15550009"}).first()
        assert row is not None
        db.session.rollback()


def test_an_insert_that_needs_python_defaults_goes_through_the_session(app):
    with app.app_context():
        now = utcnow()
        values = {"wa_id": "15550002", "profile_name": None, "user_id": None, "custom_fields": {},
                  "opted_out": False, "blocked": False, "first_seen_at": now, "last_seen_at": now,
                  "last_inbound_at": now}  # no is_test: its default is computed by SQLAlchemy
        contact_id = hot_sql.execute(_statement("contact"), values).scalar_one()
        db.session.commit()
        assert db.session.get(Contact, contact_id).is_test is False


def test_results_and_errors_read_as_sqlalchemys(app):
    with app.app_context():
        contact_id = _contact()
        with pytest.raises(NoResultFound):
            hot_sql.execute(_CONTACT, {"b_contact": contact_id + 1000}).scalar_one()
        assert hot_sql.execute(_CONTACT, {"b_contact": contact_id + 1000}).scalar() is None
        done = hot_sql.execute(messages.update().where(messages.c.contact_id == bindparam("b_c")).values(
            text=bindparam("b_t")), {"b_c": contact_id, "b_t": "x"})
        assert done.rowcount == 0
        _outbound(contact_id, callback_id="secret-value-1")
        db.session.commit()
        row = {"contact_id": contact_id, "direction": Direction.IN, "type": "text", "text": "hi", "payload": {},
               "phone_number_id": "100", "wa_message_id": "wamid.1", "context_wa_id": None,
               "status": MessageStatus.RECEIVED, "created_at": utcnow(), "wa_timestamp": None, "received_at": 1.0,
               "attempts": 0}
        assert hot_sql.execute(_statement("message"), row).scalar_one_or_none() is not None
        assert hot_sql.execute(_statement("message"), row).scalar_one_or_none() is None  # ON CONFLICT DO NOTHING
        db.session.commit()
        with pytest.raises(IntegrityError) as caught:
            hot_sql.execute(_OUTBOUND_NEW, {"contact_id": contact_id + 1000, "direction": Direction.OUT,
                                            "type": "text", "text": "never", "payload": {"secret": "s3cr3t-v4lue"},
                                            "phone_number_id": "100", "status": MessageStatus.QUEUED,
                                            "origin": "flow", "callback_id": "cb-2", "flow_session_id": None,
                                            "attempts": 0, "created_at": utcnow(), "next_attempt_at": None})
        assert "s3cr3t-v4lue" not in str(caught.value)  # parameters never reach a log line
        db.session.rollback()


def _checkouts():
    """A counter of the pool's checkouts from now on (a list: [count])."""
    seen = [0]

    def count(*_args):
        seen[0] += 1

    event.listen(db.engine, "checkout", count)
    return seen, lambda: event.remove(db.engine, "checkout", count)


def test_a_unit_of_work_holds_one_connection_for_all_its_transactions(app):
    """hot_sql's transactions (a webhook's, a turn's) commit on the connection the unit of work
    checked out first: one checkout per app context, however many transactions. The thread's
    next unit of work takes it back without the pool."""
    with app.app_context():
        seen, stop = _checkouts()
        try:
            contact_id = _contact()
            db.session.commit()
            for text in ("a", "b", "c"):
                _outbound(contact_id, callback_id=f"cb-{text}")
                db.session.commit()
            hot_sql.execute_alone(_CONTACT, {"b_contact": contact_id})
            assert seen[0] <= 1 and db.engine.pool.checkedout() == 1  # none when the thread had a spare
            first = hot_sql._connection(db.session()).connection.dbapi_connection
        finally:
            stop()
    with app.app_context():  # the thread's spare: no checkout
        seen, stop = _checkouts()
        try:
            assert _other_connection_sees(contact_id)
            assert hot_sql.execute(select(db.func.count()).select_from(messages), {}).scalar() == 3
            assert hot_sql._connection(db.session()).connection.dbapi_connection is first
            assert seen[0] == 1  # _other_connection_sees's own
            db.session.rollback()
        finally:
            stop()


def test_a_spare_connection_goes_back_to_the_pool_once_idle_or_replaced(app, monkeypatch):
    from crm.base import extensions

    with app.app_context():
        _contact()
        db.session.commit()
    assert extensions._spares.spare is not None
    with app.app_context():
        assert db.engine.pool.checkedout() == 1  # the spare
        monkeypatch.setattr(extensions, "IDLE_PING_AFTER", 0.0)  # it has been idle too long
        seen, stop = _checkouts()
        try:
            hot_sql.execute(_CONTACT, {"b_contact": 1})
            assert seen[0] == 1 and db.engine.pool.checkedout() == 1  # the old one went back
        finally:
            stop()
            db.session.rollback()
    monkeypatch.undo()
    done = threading.Event()

    def elsewhere():  # another thread ends with a spare of its own: given back to the pool
        with app.app_context():
            hot_sql.execute(_CONTACT, {"b_contact": 1})
        done.set()

    worker = threading.Thread(target=elsewhere)
    worker.start()
    worker.join()
    assert done.is_set()
    gc.collect()
    with app.app_context():
        assert db.engine.pool.checkedout() == 1  # this thread's spare alone
    extensions._spares.spare = None  # given back
    with app.app_context():
        assert db.engine.pool.checkedout() == 0


def test_the_sessions_own_statements_share_the_held_connections_transaction(app):
    """ORM and Core statements through the session after hot_sql's (or before them) run in the
    same database transaction: one commit keeps both, one rollback undoes both."""
    with app.app_context():
        contact_id = _contact()
        db.session.add(Contact(wa_id="15550077", profile_name="Orm"))
        db.session.flush()
        assert db.session.connection() is hot_sql._connection(db.session())
        db.session.rollback()
        assert db.session.execute(select(db.func.count()).select_from(contacts)).scalar() == 0
        db.session.rollback()

        contact_id = _contact()
        db.session.add(Contact(wa_id="15550078", profile_name="Orm"))
        db.session.commit()
        assert _other_connection_sees(contact_id)
        assert db.session.execute(select(db.func.count()).select_from(contacts)).scalar() == 2
        db.session.rollback()

        # the session first, hot_sql after: the session's transaction, one rollback undoes both
        db.session.add(Contact(wa_id="15550079", profile_name="First"))
        db.session.flush()
        _outbound(contact_id, callback_id="cb-orm-first")
        db.session.rollback()
        assert db.session.execute(select(db.func.count()).select_from(messages)).scalar() == 0
        db.session.rollback()


def test_the_sessions_own_work_uses_the_held_connection_too(app):
    """A unit of work that starts with the session's own statements (an API request, a job) runs
    them on the held connection as well: one connection per unit of work, whatever runs first,
    and the thread's spare serves ORM-only work too."""
    with app.app_context():
        seen, stop = _checkouts()
        try:
            db.session.add(Contact(wa_id="15550090", profile_name="Orm"))
            db.session.commit()
            with db.session.begin_nested():
                db.session.add(Contact(wa_id="15550091", profile_name="Nested"))
            db.session.commit()
            contact_id = _contact()
            db.session.commit()
            assert db.session.execute(select(db.func.count()).select_from(contacts)).scalar() == 3
            assert db.session.connection() is db.session().info[HELD]
            assert seen[0] <= 1 and db.engine.pool.checkedout() == 1
        finally:
            stop()
            db.session.rollback()
    with app.app_context():  # ORM-only work on the thread's spare: no checkout
        seen, stop = _checkouts()
        try:
            assert db.session.get(Contact, contact_id).wa_id == "15550001"
            assert seen[0] == 0
        finally:
            stop()
            db.session.rollback()


def test_a_rollback_undoes_what_only_hot_sql_wrote(app):
    with app.app_context():
        contact_id = _contact()
        db.session.commit()
        message_id = _outbound(contact_id)
        db.session.rollback()
        assert hot_sql.execute(select(messages.c.id).where(messages.c.id == bindparam("b_id")),
                               {"b_id": message_id}).first() is None
        db.session.rollback()


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)  # an SQLite file has no connection to lose
def test_a_connection_the_server_dropped_is_invalidated_and_replaced(app):
    import psycopg

    with app.app_context():
        pid = db.session.execute(select(db.func.pg_backend_pid())).scalar()
        db.session.commit()  # the connection goes back to the pool, which hands it out again next
        url = db.engine.url.render_as_string(hide_password=False).replace("+psycopg", "")
        with psycopg.connect(url, autocommit=True) as other:
            other.execute("SELECT pg_terminate_backend(%s)", (pid,))
        with pytest.raises(OperationalError) as caught:
            hot_sql.execute(_CONTACT, {"b_contact": 1})
        assert caught.value.connection_invalidated
        with pytest.raises(PendingRollbackError):  # what ran before went with the connection
            hot_sql.execute(_CONTACT, {"b_contact": 1})
        with pytest.raises(PendingRollbackError):
            db.session.commit()
        db.session.rollback()
        assert hot_sql.execute(select(db.func.pg_backend_pid()), {}).scalar() != pid


def test_a_turns_lookups_use_their_partial_indexes_without_statistics(app):
    """The waiting inbound message, the unsent outbound one and the open session are found
    through their partial indexes even in a prepared statement's generic plan on a database
    nobody analyzed (autovacuum off): the conditions are constants in the SQL text."""
    from crm.replies.sessions import _OPEN_SESSION

    expected = {"ix_messages_waiting", "ix_messages_unsent", "ix_flow_sessions_open_contact"}
    contact_plan = ""
    with app.app_context():
        dialect = db.engine.dialect
        cursor = db.session.connection().connection.cursor()
        if dialect.name == "postgresql":
            cursor.execute("SET plan_cache_mode = force_generic_plan")
        used = set()
        for stmt, params in ((_SERVE, {"b_contact": 5}), (_HEAD, {"b_contact": 5, "b_after": 0}),
                             (_OPEN_SESSION, {"b_contact": 5}), (_CONTACT, {"b_contact": 5})):
            state = stmt.compile(dialect=dialect).construct_expanded_state(params)
            if dialect.name == "sqlite":
                cursor.execute("EXPLAIN QUERY PLAN " + state.statement, state.positional_parameters)
            else:
                cursor.execute("EXPLAIN " + state.statement, state.parameters)
            plan = " ".join(str(row[-1] if dialect.name == "sqlite" else row[0]) for row in cursor.fetchall())
            used |= {name for name in expected if name in plan}
            contact_plan = plan if stmt is _CONTACT else contact_plan
        db.session.rollback()
    assert used == expected
    assert "ix_flow_sessions_open_contact" in contact_plan  # the contact's read finds its session so too


def test_statements_built_per_call_do_not_fill_the_plan_cache(app):
    saved = dict(hot_sql._plans)
    try:
        with app.app_context():
            contact_id = _contact()
            for n in range(hot_sql.MAX_PLANS + 50):  # a new statement object each time
                stmt = select(contacts.c.id).where(contacts.c.id == bindparam("b_id"), contacts.c.id > n - 10**6)
                assert hot_sql.execute(stmt, {"b_id": contact_id}).scalar_one() == contact_id
            assert len(hot_sql._plans) <= hot_sql.MAX_PLANS
            db.session.rollback()
    finally:  # the other tests' plans, as they were
        hot_sql._plans.clear()
        hot_sql._plans.update(saved)


def test_an_update_without_explicit_values_writes_the_columns_it_is_given(app):
    with app.app_context():
        contact_id = _contact()
        stmt = contacts.update().where(contacts.c.id == bindparam("b_id"))
        hot_sql.execute(stmt, {"b_id": contact_id, "profile_name": "Bea"})
        hot_sql.execute(stmt, {"b_id": contact_id, "custom_fields": {"x": 1}})
        db.session.commit()
        row = hot_sql.execute(_CONTACT, {"b_contact": contact_id}).first()
        assert (row.profile_name, row.custom_fields) == ("Bea", {"x": 1})


@contextlib.contextmanager
def _libpq_trace():
    """What the session's PostgreSQL connection sends meanwhile (libpq's trace), as text."""
    seen = [""]
    if db.engine.dialect.name != "postgresql":
        yield lambda: seen[0]
        return
    pgconn = db.session.connection().connection.dbapi_connection.pgconn
    with tempfile.TemporaryFile("w+") as out:
        pgconn.trace(out.fileno())
        try:
            yield lambda: seen[0]
        finally:
            pgconn.untrace()
            out.seek(0)
            seen[0] = out.read()


def _other_connection_sees(contact_id: int) -> bool:
    with db.engine.connect() as other:
        return other.execute(select(contacts.c.id).where(contacts.c.id == contact_id)).first() is not None


def test_a_statement_run_alone_is_committed_and_the_connection_stays_transactional(app):
    with app.app_context():
        now = utcnow()
        stmt = _statement("contact_new")
        values = {"wa_id": "15550030", "profile_name": None, "user_id": None, "custom_fields": {},
                  "opted_out": False, "blocked": False, "is_test": False, "first_seen_at": now,
                  "last_seen_at": now, "last_inbound_at": now}
        with _libpq_trace() as sent:
            contact_id = hot_sql.execute_alone(stmt, values).scalar_one()
        if db.engine.dialect.name == "postgresql":  # one round trip: no BEGIN, no COMMIT
            assert "INSERT INTO contacts" in sent() and "BEGIN" not in sent() and "COMMIT" not in sent()
        assert _other_connection_sees(contact_id)
        # the next transaction on the same connection is a transaction again: a rollback undoes it
        second = hot_sql.execute(stmt, {**values, "wa_id": "15550031"}).scalar_one()
        hot_sql.execute(stmt, {**values, "wa_id": "15550032"})
        db.session.rollback()
        assert not _other_connection_sees(second)
        assert db.session.execute(select(db.func.count()).select_from(contacts)).scalar() == 1
        db.session.rollback()


def test_a_statement_run_alone_that_fails_leaves_the_connection_transactional(app):
    with app.app_context():
        contact_id = _contact()
        db.session.commit()
        with pytest.raises(IntegrityError):  # no such contact: the foreign key refuses it
            hot_sql.execute_alone(_OUTBOUND_NEW, {
                "contact_id": contact_id + 1000, "direction": Direction.OUT, "type": "text", "text": "never",
                "payload": {}, "phone_number_id": "100", "status": MessageStatus.QUEUED, "origin": "flow",
                "callback_id": "cb-9", "flow_session_id": None, "attempts": 0, "created_at": utcnow(),
                "next_attempt_at": None})
        db.session.rollback()
        first = _outbound(contact_id)
        db.session.rollback()  # undone, as in any transaction
        assert db.session.execute(select(messages.c.id).where(messages.c.id == first)).first() is None
        if db.engine.dialect.name == "postgresql":
            assert db.session.connection().connection.dbapi_connection.autocommit is False
        db.session.rollback()


def test_a_statement_run_alone_inside_a_transaction_joins_it(app):
    """With work already in the transaction, the statement runs in it and both are committed."""
    with app.app_context():
        contact_id = _contact()  # not committed yet
        message_id = hot_sql.execute_alone(_OUTBOUND_NEW, {
            "contact_id": contact_id, "direction": Direction.OUT, "type": "text", "text": "x", "payload": {},
            "phone_number_id": "100", "status": MessageStatus.QUEUED, "origin": "flow", "callback_id": "cb-8",
            "flow_session_id": None, "attempts": 0, "created_at": utcnow(), "next_attempt_at": None}).scalar_one()
        assert _other_connection_sees(contact_id)
        db.session.rollback()
        assert db.session.execute(select(messages.c.id).where(messages.c.id == message_id)).first() is not None
        db.session.rollback()


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)  # an SQLite file has no connection to lose
def test_a_statement_run_alone_on_a_dropped_connection_fails_cleanly_and_the_next_one_works(app):
    import psycopg

    with app.app_context():
        contact_id = _contact()
        pid = db.session.execute(select(db.func.pg_backend_pid())).scalar()
        db.session.commit()
        url = db.engine.url.render_as_string(hide_password=False).replace("+psycopg", "")
        with psycopg.connect(url, autocommit=True) as other:
            other.execute("SELECT pg_terminate_backend(%s)", (pid,))
        with pytest.raises(OperationalError) as caught:
            hot_sql.execute_alone(_CONTACT, {"b_contact": contact_id})
        assert caught.value.connection_invalidated
        db.session.rollback()
        assert hot_sql.execute_alone(_CONTACT, {"b_contact": contact_id}).first().id == contact_id
        raw = db.session.connection().connection.dbapi_connection
        assert raw.autocommit is False and raw.info.backend_pid != pid
        db.session.rollback()


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)  # SQLite has no round trips
def test_the_webhooks_store_of_one_message_is_one_round_trip(app):
    """A one-message delivery is stored by one statement in autocommit (crm.replies.intake):
    libpq's trace shows one request to the server, and no BEGIN or COMMIT."""
    with app.app_context():
        for wa_id in ("15550050", "15550050", "15550051"):  # a new contact, a known one, another new one
            incoming = parse_webhook(envelope([message(wa_id, body="hi")])).messages
            with _libpq_trace() as sent:
                stored = store_inbound(incoming)
            assert len(stored) == 1 and stored[0].new
            requests = [line for line in sent().splitlines()
                        if "\tF\t" in line and ("\tSync" in line or "\tQuery" in line)]
            assert len(requests) == 1, sent()
            assert "BEGIN" not in sent() and "COMMIT" not in sent()
        rows = db.session.execute(select(messages.c.contact_id).order_by(messages.c.id)).scalars().all()
        assert rows[0] == rows[1] != rows[2]
        db.session.rollback()
