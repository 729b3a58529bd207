"""Store what the webhook receives: contacts, inbound messages and statuses.

Exactly once: ``messages`` has a unique key on (phone_number_id, wa_message_id)
and new rows are inserted with ON CONFLICT DO NOTHING, so of several copies of
one event only the first commit creates a row; the others see the conflict. No
marker in Redis lets a copy skip the database: Meta re-delivers only what was not
answered 200, and asking Redis first cost every webhook a round trip (about 0.1 ms
of CPU, ``bench/profile_turn.py``) to spare a rare copy a few statements.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from sqlalchemy import DateTime, String, and_, bindparam, case, exists, func, or_, select
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.exc import IntegrityError

from crm.base import hot_sql
from crm.base.enums import PENDING, STATUS_RANK, Direction, MessageStatus
from crm.base.extensions import db, dialect_insert
from crm.base.models import Contact, Message, utcnow
from crm.base.templates import apply_status_update, enqueue_sync
from crm.replies.wake import wake_many
from integrations.whatsapp.inbound import IdentityChange, InboundMessage, StatusUpdate
from integrations.whatsapp.templates import TemplateStatusUpdate

log = logging.getLogger(__name__)


@dataclass
class Stored:
    message_id: int
    contact_id: int
    new: bool


_contacts, _messages = Contact.__table__, Message.__table__
_statements: dict[tuple[str, str], object] = {}


def _statement(kind: str):
    """The webhook's INSERT ... ON CONFLICT statements, built once per dialect (SQLAlchemy then
    computes their cache keys once, not on every webhook)."""
    key = (kind, db.engine.dialect.name)
    if key not in _statements:
        if kind == "contact":
            stmt = _upsert_by_phone(dialect_insert(_contacts))
        elif kind == "contact_new":  # a user id not seen before: any conflict means a concurrent insert
            stmt = dialect_insert(_contacts).on_conflict_do_nothing().returning(_contacts.c.id)
        elif kind == "message_by_phone":  # PostgreSQL: the contact's upsert and the message, one statement
            contact = postgresql_insert(_contacts).from_select(list(_CONTACT_VALUES), select(*(
                bindparam(f"c_{name}", type_=_contacts.c[name].type) for name in _CONTACT_VALUES)).where(_NOT_STORED))
            stmt = _message_with_contact(_upsert_by_phone(contact).cte("upserted"))
        elif kind == "message_by_user_id":  # PostgreSQL: the contact's update and the message, one statement
            stmt = _message_with_contact(_BY_USER_ID.where(_NOT_STORED).cte("seen"))
        else:
            stmt = (dialect_insert(_messages)
                    .on_conflict_do_nothing(index_elements=[_messages.c.phone_number_id, _messages.c.wa_message_id])
                    .returning(_messages.c.id))
        _statements[key] = stmt
    return _statements[key]


# What the one-statement store of a message sets (``message_by_phone``): the contact's columns
# (``_new_contact``, bound as c_<name>) and the message's.
_CONTACT_VALUES = ("wa_id", "profile_name", "user_id", "custom_fields", "opted_out", "blocked", "is_test",
                   "first_seen_at", "last_seen_at", "last_inbound_at")
_MESSAGE_VALUES = ("direction", "type", "text", "payload", "phone_number_id", "wa_message_id", "context_wa_id",
                   "status", "created_at", "wa_timestamp", "received_at", "attempts")


def _later(written):
    """``last_inbound_at`` never moves back: a delivery Meta re-sent late, or a batch's older
    message, leaves a later one in place (it opens WhatsApp's 24-hour window)."""
    stored = _contacts.c.last_inbound_at
    return case((or_(stored.is_(None), stored < written), written), else_=stored)


# Senders known by Meta's business-scoped user id are matched user id first; the phone number
# a message brings is recorded on the contact unless another contact already has it.
_other = _contacts.alias("other")
_b_wa = bindparam("b_wa", type_=String)
_SEEN = {"last_seen_at": bindparam("b_now"), "last_inbound_at": _later(bindparam("b_sent", type_=DateTime)),
         "profile_name": func.coalesce(bindparam("b_name", type_=String), _contacts.c.profile_name)}
_BY_USER_ID = (_contacts.update().where(_contacts.c.user_id == bindparam("b_uid")).values(
    **_SEEN, wa_id=case((and_(_b_wa.is_not(None), ~exists().where(_other.c.wa_id == _b_wa,
                                                                  _other.c.id != _contacts.c.id)), _b_wa),
                        else_=_contacts.c.wa_id)).returning(_contacts.c.id))
_BY_PHONE = (_contacts.update().where(_contacts.c.wa_id == _b_wa)
             .values(**_SEEN, user_id=bindparam("b_uid")).returning(_contacts.c.id))


# A copy of a stored message (Meta delivers at least once) changes nothing: a late one would
# otherwise move its contact back to the number or name it had then.
_NOT_STORED = ~exists().where(
    _messages.c.phone_number_id == bindparam("phone_number_id", type_=_messages.c.phone_number_id.type),
    _messages.c.wa_message_id == bindparam("wa_message_id", type_=_messages.c.wa_message_id.type))


def _upsert_by_phone(stmt):
    """``stmt`` (an INSERT into contacts) made an upsert by phone number, RETURNING the id: a
    profile name or user id that Meta leaves out keeps the stored one."""
    return stmt.on_conflict_do_update(index_elements=[_contacts.c.wa_id], set_={
        "last_seen_at": stmt.excluded.last_seen_at, "last_inbound_at": _later(stmt.excluded.last_inbound_at),
        "profile_name": func.coalesce(stmt.excluded.profile_name, _contacts.c.profile_name),
        "user_id": func.coalesce(stmt.excluded.user_id, _contacts.c.user_id),
    }).returning(_contacts.c.id)


def _new_contact(wa_id: str | None, profile_name: str | None, user_id: str | None, now, sent_at) -> dict:
    """A contact's columns (``_CONTACT_VALUES``) as a message of theirs makes them."""
    return {"wa_id": wa_id, "profile_name": profile_name or None, "user_id": user_id or None,
            "custom_fields": {}, "opted_out": False, "blocked": False, "is_test": False, "first_seen_at": now,
            "last_seen_at": now, "last_inbound_at": sent_at}


def _seen(user_id: str, wa_id: str | None, profile_name: str | None, now, sent_at) -> dict:
    """The parameters of ``_BY_USER_ID`` and ``_BY_PHONE``."""
    return {"b_uid": user_id, "b_wa": wa_id, "b_name": profile_name or None, "b_now": now, "b_sent": sent_at}


def _message_with_contact(contact):
    """INSERT the message (its columns bound by name) for the contact the CTE ``contact`` returns,
    ON CONFLICT DO NOTHING, RETURNING (id, contact_id): no row when the CTE found no contact or
    the message was stored before."""
    return (postgresql_insert(_messages)
            .from_select(["contact_id", *_MESSAGE_VALUES], select(contact.c.id, *(
                bindparam(name, type_=_messages.c[name].type) for name in _MESSAGE_VALUES)))
            .on_conflict_do_nothing(index_elements=[_messages.c.phone_number_id, _messages.c.wa_message_id])
            .returning(_messages.c.id, _messages.c.contact_id))


def upsert_contact(wa_id: str | None, profile_name: str | None, user_id: str | None, now, sent_at) -> int:
    """The contact's id, created or updated (last seen, profile name, ids) in the open transaction.

    With a user id: the contact with that user id, else the one with the phone number (which
    then gets the user id), else a new one. Without: by phone number, as before user ids.
    ``sent_at``: when the user sent the message, which is when WhatsApp's 24-hour window opened
    (``last_inbound_at``, never moved back); None (WhatsApp's own notice, not the user writing)
    leaves the window as it was.
    """
    values = _new_contact(wa_id, profile_name, user_id, now, sent_at)
    if not user_id:
        return hot_sql.execute(_statement("contact"), values).scalar_one()
    seen = _seen(user_id, wa_id, profile_name, now, sent_at)
    for _attempt in range(2):
        contact_id = hot_sql.execute(_BY_USER_ID, seen).scalar()
        if contact_id is None and wa_id:
            contact_id = hot_sql.execute(_BY_PHONE, seen).scalar()
        if contact_id is None:
            contact_id = hot_sql.execute(_statement("contact_new"), values).scalar()
        if contact_id is not None:
            return contact_id
    raise RuntimeError(f"contact for user id {user_id!r} could not be stored")  # only a database fault


def _moved(column):
    """UPDATE the contact's ``column`` to ``b_new`` unless another contact already has that value."""
    return (_contacts.update().where(_contacts.c.id == bindparam("b_id"), ~exists().where(
        _other.c[column.key] == bindparam("b_new"), _other.c.id != _contacts.c.id))
        .values({column.key: bindparam("b_new")}).returning(_contacts.c.id))


_NEW_NUMBER, _NEW_USER_ID = _moved(_contacts.c.wa_id), _moved(_contacts.c.user_id)


def _contact_by(column, value: str | None) -> int | None:
    if not value:
        return None
    return db.session.execute(select(_contacts.c.id).where(column == value)).scalar()


def notice_contact(m: InboundMessage, now) -> int:
    """The contact a ``system`` notice about a changed number or user id belongs to, moved to the
    new values (``apply_identity_change``), in the open transaction.

    The notice may name the user by the old or the new identity (Meta sends the previous user id
    beside the new one), and a re-delivered notice finds the contact already moved: so the
    contact is looked up by the previous user id, the sender's ids, then the new ones. A notice
    about a user we never met makes a contact under the new identity. Either way it opens no
    24-hour window: it is WhatsApp's, not the user's.
    """
    change = m.identity
    assert change is not None
    for column, value in ((_contacts.c.user_id, change.previous_user_id), (_contacts.c.wa_id, m.wa_id),
                          (_contacts.c.user_id, m.user_id), (_contacts.c.wa_id, change.new_wa_id),
                          (_contacts.c.user_id, change.new_user_id)):
        contact_id = _contact_by(column, value)
        if contact_id is not None:
            apply_identity_change(contact_id, change)
            return contact_id
    return upsert_contact(change.new_wa_id or m.wa_id, m.profile_name, change.new_user_id or m.user_id, now,
                          sent_at=None)


def apply_identity_change(contact_id: int, change: IdentityChange) -> None:
    """The sender changed their phone number or user id (a ``system`` message): the contact moves
    to the new one, in the open transaction, keeping its conversation, fields, session and
    consent. When another contact already has it (or takes it meanwhile), nothing moves (merging
    two histories is an operator's call) and a warning says so."""
    for column, statement, new in (("number", _NEW_NUMBER, change.new_wa_id),
                                   ("user id", _NEW_USER_ID, change.new_user_id)):
        if not new:
            continue
        try:
            with db.session.begin_nested():  # a unique violation (a concurrent insert) stays in here
                moved = hot_sql.execute(statement, {"b_id": contact_id, "b_new": new}).scalar() is not None
        except IntegrityError:
            moved = False
        if moved:
            log.info("contact %s changed their %s", contact_id, column,
                     extra={"event": "contact.identity_changed", "contact_id": contact_id})
        else:
            log.warning("contact %s changed their %s, but another contact already has the new one; "
                        "left as it was", contact_id, column,
                        extra={"event": "contact.identity_taken", "contact_id": contact_id})


_STORED = select(_messages.c.id, _messages.c.contact_id, _messages.c.processed_at).where(
    _messages.c.phone_number_id == bindparam("b_pnid"), _messages.c.wa_message_id == bindparam("b_wamid"))


def _stored(m: InboundMessage):
    """The row (id, contact_id, processed_at) an earlier copy of ``m`` was stored as, or None.
    (Prebuilt and run by ``hot_sql``: an ORM select built per call cost ~1 ms of CPU per webhook.)"""
    return hot_sql.execute(_STORED, {"b_pnid": m.phone_number_id, "b_wamid": m.wa_message_id}).first()


def _unanswered(row) -> list[Stored]:
    """A copy's stored row (``_stored``) as what is still to wake: nothing once it was answered
    (stored earlier but maybe never enqueued otherwise)."""
    return [Stored(row.id, row.contact_id, False)] if row.processed_at is None else []


def _message_values(m: InboundMessage, now, received_at: float) -> dict:
    return {"direction": Direction.IN, "type": m.type, "text": m.text, "payload": m.payload,
            "phone_number_id": m.phone_number_id, "wa_message_id": m.wa_message_id, "context_wa_id": m.context_id,
            "status": MessageStatus.RECEIVED, "created_at": now, "wa_timestamp": m.timestamp,
            "received_at": received_at, "attempts": 0}


def _store_alone(m: InboundMessage, now, received_at: float) -> Stored | None:
    """PostgreSQL, a delivery of one message from a known sender (or, by phone number alone, any
    sender): the contact's update and the message's insert as one statement, a transaction of its
    own, committed. One round trip where BEGIN, two statements and COMMIT were four
    (bench/profile_turn.py). None when this does not apply, when no contact has the message's
    user id yet, or when the message was stored before: the general path then does it all."""
    if m.identity is not None or db.engine.dialect.name != "postgresql":
        return None
    sent_at = min(m.timestamp or now, now)
    if m.user_id:  # matched user id first (upsert_contact); a new user id takes the general path
        kind, values = "message_by_user_id", _seen(m.user_id, m.wa_id, m.profile_name, now, sent_at)
    elif m.wa_id:
        kind = "message_by_phone"
        values = {f"c_{name}": value for name, value in _new_contact(m.wa_id, m.profile_name, None, now,
                                                                      sent_at).items()}
    else:
        return None
    values.update(_message_values(m, now, received_at))
    row = hot_sql.execute_alone(_statement(kind), values).first()
    return None if row is None else Stored(row.id, row.contact_id, True)


def store_inbound(messages: list[InboundMessage], received_at: float | None = None) -> list[Stored]:
    """Store the messages of one webhook in one transaction and wake their contacts.

    Raises on database or Redis failure: the caller answers 5xx and Meta re-delivers.
    """
    if not messages:
        return []
    received_at = received_at or time.time()
    now = utcnow()
    stored: list[Stored] = []
    try:
        alone = _store_alone(messages[0], now, received_at) if len(messages) == 1 else None
        if alone is not None:  # stored and committed
            stored.append(alone)
        for m in messages if alone is None else ():
            earlier = _stored(m)
            if earlier is not None:  # a copy (Meta delivers at least once): its contact stays as it is
                stored += _unanswered(earlier)
                continue
            if m.identity is None:  # the user wrote: the 24-hour window opened when they sent it
                contact_id = upsert_contact(m.wa_id, m.profile_name, m.user_id, now, min(m.timestamp or now, now))
            else:
                contact_id = notice_contact(m, now)
            row = {"contact_id": contact_id, **_message_values(m, now, received_at)}
            new_id = hot_sql.execute(_statement("message"), row).scalar_one_or_none()
            if new_id is not None:
                stored.append(Stored(new_id, contact_id, True))
            else:  # a copy stored meanwhile by a concurrent delivery
                stored += _unanswered(_stored(m))
        db.session.commit()
    except Exception:
        db.session.rollback()
        raise
    wake_many([item.contact_id for item in stored])
    return stored


# --- statuses ---------------------------------------------------------------

STATUS_COLUMN = {MessageStatus.SENT: "sent_at", MessageStatus.DELIVERED: "delivered_at",
                 MessageStatus.READ: "read_at", MessageStatus.FAILED: "failed_at", MessageStatus.DELETED: "deleted_at"}


def apply_status(msg: Message, update_: StatusUpdate) -> None:
    """Record one status event; a message's status never moves backwards."""
    when = update_.timestamp or utcnow()
    column = STATUS_COLUMN[update_.status]
    if getattr(msg, column) is None:
        setattr(msg, column, when)
    if update_.status == MessageStatus.FAILED:
        error = update_.errors[0] if update_.errors else {}
        msg.error_code = error.get("code")
        msg.error_title = (error.get("title") or error.get("message") or "")[:512] or None
        msg.error_details = (error.get("error_data") or {}).get("details") or error.get("message")
        if msg.status not in (MessageStatus.DELIVERED, MessageStatus.READ):
            msg.status = MessageStatus.FAILED
    elif update_.status == MessageStatus.DELETED:
        msg.status = MessageStatus.DELETED
    elif (msg.status not in (MessageStatus.FAILED, MessageStatus.DELETED)
          and STATUS_RANK[update_.status] > STATUS_RANK.get(msg.status, -1)):
        msg.status = update_.status


def store_statuses(statuses: list[StatusUpdate]) -> int:
    """Apply status webhooks to our outbound rows. Returns how many matched."""
    if not statuses:
        return 0
    matched = 0
    try:
        for st in statuses:
            msg = db.session.execute(
                select(Message).where(Message.phone_number_id == st.phone_number_id,
                                      Message.wa_message_id == st.wa_message_id)
            ).scalar_one_or_none()
            if msg is None and st.callback_id:
                # The send's HTTP answer was lost, but Meta accepted it: link it now.
                msg = db.session.execute(
                    select(Message).where(Message.callback_id == st.callback_id)
                ).scalar_one_or_none()
                if msg is not None and msg.wa_message_id is None:
                    msg.wa_message_id = st.wa_message_id
                    if msg.status in PENDING:
                        msg.status, msg.next_attempt_at = MessageStatus.SENT, None
            if msg is None:
                log.debug("status for unknown message %s", st.wa_message_id)
                continue
            apply_status(msg, st)
            matched += 1
        db.session.commit()
    except Exception:
        db.session.rollback()
        raise
    return matched


def store_template_updates(updates: list[TemplateStatusUpdate]) -> int:
    """Apply template status webhooks (approved, paused, ...); a template we have not synced yet,
    or an event that implies no status, asks the ``low`` worker for a sync. Returns how many."""
    if not updates:
        return 0
    try:
        follow_up = [apply_status_update(u) for u in updates]
        db.session.commit()
    except Exception:
        db.session.rollback()
        raise
    if any(follow_up):
        enqueue_sync()
    return len(updates)
