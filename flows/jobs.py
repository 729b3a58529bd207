"""Flow jobs (queue ``high``): one contact at a time, all contacts in parallel.

``run_contact(contact_id)`` takes the contact's lock, delivers its outbox
(queued rows, in order) and answers the oldest unanswered inbound row; then the
contact goes to the back of the queue if more is waiting. A contact has at most
one flow job queued (``crm.intake.enqueue_flow_job``); a job that finds the lock
taken (an operator action, a retry wake-up) returns at once: the holder looks
at the inbox again after releasing, so nothing waits forever.

The database is the inbox, so nothing is lost when a worker dies or Redis
blips: ``recover_stalled`` (every minute) re-enqueues contacts whose messages
have waited too long.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from rq.exceptions import DuplicateJobError
from sqlalchemy import JSON, DateTime, Float, String, and_, bindparam, cast, literal, null, or_, select, union_all
from sqlalchemy.orm.exc import StaleDataError

from crm import metrics
from crm.delivery import PENDING, Outgoing, claim_new, deliver_due, get_client, outbound_values, outbox_head
from crm.extensions import FAILURE_TTL, RESULT_TTL, db, get_queue, get_redis, get_settings
from crm.intake import enqueue_flow_job, queued_key
from crm.locks import ContactLock
from crm.models import Contact, Message, contact_context, utcnow, window_open
from flows import engine
from flows.document import DEFAULT_EXPIRED
from flows.models import OPEN_STATUSES, FlowSession
from flows.store import library_cache
from integrations.whatsapp.inbound import describe

log = logging.getLogger(__name__)
STALL_AFTER = timedelta(seconds=30)
# Turns one job takes before the contact goes to the back of the queue (None: drain the
# inbox). One turn per job keeps latency fair when many contacts write at once: a contact
# that answers instantly cannot hold a worker while others wait.
TURNS_PER_JOB: int | None = 1


def actions() -> dict:
    """Registered flow actions (name -> callable(params, context))."""
    from flows.actions import registry

    return registry()


def open_session(contact_id: int) -> FlowSession | None:
    return db.session.execute(
        select(FlowSession).where(FlowSession.contact_id == contact_id, FlowSession.status.in_(OPEN_STATUSES))
        .order_by(FlowSession.id.desc()).limit(1)
    ).scalar_one_or_none()


# The reply path runs prebuilt table statements (see crm.delivery): a turn is a handful of
# statements and one commit, with no ORM identity map to flush or reload.
messages, sessions, contacts = Message.__table__, FlowSession.__table__, Contact.__table__
_CONTACT = select(contacts.c.id, contacts.c.wa_id, contacts.c.profile_name, contacts.c.custom_fields,
                  contacts.c.opted_out, contacts.c.blocked, contacts.c.last_inbound_at
                  ).where(contacts.c.id == bindparam("b_contact"))
_OPEN_SESSION = (select(sessions.c.id, sessions.c.flow_name, sessions.c.step_id, sessions.c.status,
                        sessions.c.state, sessions.c.flow_version, sessions.c.version)
                 .where(sessions.c.contact_id == bindparam("b_contact"), sessions.c.status.in_(OPEN_STATUSES))
                 .order_by(sessions.c.id.desc()).limit(1))
_PROCESSED = (messages.update().where(messages.c.id == bindparam("b_id"))
              .values(processed_at=bindparam("b_now"), flow_session_id=bindparam("b_session")))
_REPLY_MS = messages.update().where(messages.c.id == bindparam("b_id")).values(reply_ms=bindparam("b_ms"))
_SESSION_WRITE = (sessions.update().where(sessions.c.id == bindparam("b_id"),
                                          sessions.c.version == bindparam("b_version"))
                  .values(flow_name=bindparam("b_flow"), flow_version=bindparam("b_flow_version"),
                          step_id=bindparam("b_step"), state=bindparam("b_state"),
                          last_activity_at=bindparam("b_now"), status=bindparam("b_status"),
                          expires_at=bindparam("b_expires"), ended_at=bindparam("b_ended"),
                          end_reason=bindparam("b_reason"), version=sessions.c.version + 1))
_SESSION_CLOSE = (sessions.update().where(sessions.c.id == bindparam("b_id"),
                                          sessions.c.version == bindparam("b_version"))
                  .values(status="ended", end_reason=bindparam("b_reason"), ended_at=bindparam("b_now"),
                          expires_at=None, version=sessions.c.version + 1))
_SESSION_NEW = sessions.insert().returning(sessions.c.id)
_CONTACT_WRITE = (contacts.update().where(contacts.c.id == bindparam("b_id"))
                  .values(custom_fields=bindparam("b_fields"), opted_out=bindparam("b_opted_out")))
_OUTBOUND_NEW = messages.insert().returning(messages.c.id)


def load_contact(contact_id: int):
    return db.session.execute(_CONTACT, {"b_contact": contact_id}).first()


def open_session_row(contact_id: int):
    """The contact's open session as a row (id, flow_name, step_id, status, state, flow_version, version)."""
    return db.session.execute(_OPEN_SESSION, {"b_contact": contact_id}).first()


def idle_minutes(library: engine.Library, flow_name: str) -> float:
    flow = library.flows.get(flow_name)
    if flow is not None and flow.settings.idle_minutes:
        return flow.settings.idle_minutes
    return get_settings().session_idle_minutes


def queue_outbound(contact: Contact, phone_number_id: str, message: dict, origin: str,
                   session_id: int | None = None, now=None) -> Message:
    """Add a message to the contact's outbox in the open ORM transaction (operator and system sends)."""
    row = Message(**outbound_values(contact.id, phone_number_id, message, origin, session_id, now or utcnow()))
    db.session.add(row)
    return row


def session_of(row) -> engine.Session:
    if row is None:
        return engine.Session()
    return engine.Session.from_row(row.flow_name, row.step_id, row.status, row.state, row.flow_version)


def process_inbound(inbound, contact, claim_first: bool) -> tuple[engine.Turn | None, list[Outgoing] | None]:
    """Run the engine for one inbound message and commit everything it produced at once.

    With ``claim_first`` (the outbox was empty before the turn) the turn's first message is
    committed already claimed for sending, so that delivery needs no commit of its own, and
    its rows are returned (the outbox then holds exactly them); otherwise None is returned
    in their place and delivery reads the outbox.
    """
    now = utcnow()
    if contact.blocked:
        db.session.execute(_PROCESSED, {"b_id": inbound.id, "b_now": now, "b_session": None})
        db.session.commit()
        return None, None
    settings = get_settings()
    library = library_cache.get()
    row = open_session_row(contact.id)
    kind, text, reply_id = describe(inbound.payload)
    message = engine.Inbound(type=kind, text=text, reply_id=reply_id, payload=inbound.payload)
    turn = engine.handle(library, session_of(row), message, contact_context(contact),
                         engine.EngineSettings.from_settings(settings), actions())
    session_id, rows, claimed = apply_turn(turn, contact, row, library, inbound.phone_number_id, now,
                                           claim_first=claim_first)
    db.session.execute(_PROCESSED, {"b_id": inbound.id, "b_now": now, "b_session": session_id})
    db.session.commit()
    return turn, rows if claimed else None


def apply_turn(turn: engine.Turn, contact, row, library: engine.Library, phone_number_id: str, now,
               claim_first: bool = False) -> tuple[int | None, list[Outgoing], bool]:
    """Write a turn's session, contact changes and outbound rows into the open transaction.

    ``contact`` and ``row`` (the open session, or None) are what was read before the turn.
    Returns the session's id, the outbound rows in order, and whether the first was inserted
    already claimed for sending (asked with ``claim_first``, done when the 24-hour window is
    open). Raises StaleDataError when the session changed since it was read.
    """
    new = turn.session
    fields, opted_out, changed = dict(contact.custom_fields or {}), contact.opted_out, False
    for effect in turn.effects:
        if effect.kind == "set_contact_field":
            fields[effect.data["name"]], changed = effect.data["value"], True
        elif effect.kind in ("opt_out", "opt_in"):
            opted_out, changed = effect.kind == "opt_out", True
        elif effect.kind == "error":
            log.warning("flow error: %s", effect.data, extra={"event": "flow.error", "contact_id": contact.id})
    if changed:
        db.session.execute(_CONTACT_WRITE, {"b_id": contact.id, "b_fields": fields, "b_opted_out": opted_out})
    ends = [e.data["reason"] for e in turn.effects if e.kind == "session_ended"]
    session_id, version = (row.id, row.version) if row is not None else (None, None)
    if turn.effect("session_started") is not None:
        if row is not None:  # the old session ends where the new one starts
            close_session(row, ends.pop(0) if ends else "restarted", now)
        session_id = db.session.execute(_SESSION_NEW, {
            "contact_id": contact.id, "flow_name": new.flow, "flow_version": new.flow_version or 1,
            "status": "active", "state": {}, "started_at": now, "last_activity_at": now, "version": 1,
        }).scalar_one()
        version = 1
    if session_id is not None:
        values = {"b_id": session_id, "b_version": version, "b_flow": new.flow,
                  "b_flow_version": new.flow_version or (row.flow_version if row is not None else 1),
                  "b_step": new.step, "b_state": new.to_state(), "b_now": now, "b_status": new.status,
                  "b_expires": None, "b_ended": None, "b_reason": None}
        if new.status == "active":
            values["b_expires"] = now + timedelta(minutes=idle_minutes(library, new.flow))
        elif new.status not in OPEN_STATUSES:
            values.update(b_status="ended", b_ended=now, b_reason=ends[-1] if ends else "completed")
        if db.session.execute(_SESSION_WRITE, values).rowcount != 1:
            raise StaleDataError(f"flow session {session_id} changed during the turn")
    rows: list[Outgoing] = []
    claim_first = claim_first and bool(turn.messages) and window_open(contact.last_inbound_at, now)
    for message in turn.messages:
        values = outbound_values(contact.id, phone_number_id, message, "flow", session_id, now)
        if claim_first and not rows:
            claim_new(values, now)
        message_id = db.session.execute(_OUTBOUND_NEW, values).scalar_one()
        rows.append(Outgoing(message_id, message["type"], message, phone_number_id, values["callback_id"],
                             values["attempts"], values["next_attempt_at"]))
    return session_id, rows, claim_first


def close_session(row, reason: str, now) -> None:
    """End an open session read as a row (optimistic: raises StaleDataError if it changed)."""
    if db.session.execute(_SESSION_CLOSE, {"b_id": row.id, "b_version": row.version, "b_reason": reason,
                                           "b_now": now}).rowcount != 1:
        raise StaleDataError(f"flow session {row.id} changed during the turn")


def start_flow_for(contact_id: int, flow_name: str) -> engine.Turn:
    """An operator starts a flow: end the open session, run the flow's first steps, commit.

    The caller holds the contact's lock and enqueues delivery afterwards.
    """
    settings, library, now = get_settings(), library_cache.get(), utcnow()
    contact, row = load_contact(contact_id), open_session_row(contact_id)
    turn = engine.start_flow(library, session_of(row), flow_name, contact_context(contact),
                             engine.EngineSettings.from_settings(settings), actions())
    if row is not None and row.status == "handover":
        close_session(row, "replaced", now)
        row = None
    apply_turn(turn, contact, row, library, settings.whatsapp_phone_number_id, now)
    db.session.commit()
    return turn


def enqueue_delivery(contact_id: int) -> None:
    """Deliver a contact's queued messages soon (operator sends, started flows)."""
    get_queue("high").enqueue(run_contact, contact_id, result_ttl=RESULT_TTL, failure_ttl=FAILURE_TTL)


def _turn_with_retry(inbound, contact, claim_first: bool):
    """The idle-session cleanup may expire the session under us: then redo the turn."""
    for _attempt in range(3):
        try:
            return contact, *process_inbound(inbound, contact, claim_first)
        except StaleDataError:
            db.session.rollback()
            claim_first = False  # the cleanup may have queued a notice: delivery takes the outbox head
            log.info("session changed during the turn; redoing it", extra={"contact_id": contact.id})
            contact = load_contact(contact.id)
    raise RuntimeError(f"could not commit a turn for contact {contact.id} after 3 tries")


def drain(contact_id: int, lock: ContactLock, max_turns: int | None = None) -> None:
    """Deliver the outbox, then answer waiting messages (at most ``max_turns``), in order."""
    settings = get_settings()
    turns = 0
    while max_turns is None or turns < max_turns:
        contact = load_contact(contact_id)
        if contact is None:
            return
        inbound, outbox_head = heads(contact_id)
        outbox_clear = outbox_head is None
        if not outbox_clear:
            due = deliver_due(contact_id, contact.wa_id, contact.last_inbound_at, extend=lock.extend)
            if due is not None:
                schedule_wake(contact_id, due)
            outbox_clear = due is None
        if inbound is None:
            return
        contact, turn, rows = _turn_with_retry(inbound, contact, claim_first=outbox_clear)
        reply_ms: list[float] = []  # webhook -> first accepted send, once known

        def on_sent(_message_id: int, when: float, reply_ms: list = reply_ms, inbound=inbound) -> None:
            if not reply_ms and inbound.received_at:
                reply_ms.append(round((when - inbound.received_at) * 1000, 1))
                db.session.execute(_REPLY_MS, {"b_id": inbound.id, "b_ms": reply_ms[0]})

        due = deliver_due(contact_id, contact.wa_id, contact.last_inbound_at, on_sent=on_sent,
                          extend=lock.extend, claimed=rows[0] if rows else None, then=rows[1:] if rows else None)
        if due is not None:
            schedule_wake(contact_id, due)
        latency_ms = reply_ms[0] if reply_ms else None
        if latency_ms is not None:
            metrics.REPLY_LATENCY.observe(latency_ms / 1000)
        session = turn.session if turn else None
        log.info("processed message %s", inbound.id, extra={
            "event": "flow.turn", "contact_id": contact_id, "flow": session.flow if session else None,
            "step": session.step if session else None, "ms": latency_ms})
        if turn is not None and session.status != "handover":
            # Read receipt after the reply: it must never hold the reply back. The typing
            # indicator only makes sense while a reply is still on its way.
            get_client().mark_read(inbound.phone_number_id or settings.whatsapp_phone_number_id,
                                   inbound.wa_message_id, typing=due is not None)
        lock.extend()
        turns += 1


def schedule_wake(contact_id: int, when) -> None:
    delay = max(0.0, (when - utcnow()).total_seconds())
    get_queue("high").enqueue_in(timedelta(seconds=delay + 0.05), run_contact, contact_id,
                                 result_ttl=RESULT_TTL, failure_ttl=FAILURE_TTL)


_INBOX_HEAD = (select(messages.c.id, cast(null(), DateTime()).label("next_attempt_at"), messages.c.payload,
                      messages.c.phone_number_id, messages.c.wa_message_id, messages.c.received_at)
               .where(messages.c.contact_id == bindparam("b_contact"), messages.c.direction == "in",
                      messages.c.processed_at.is_(None)).order_by(messages.c.id).limit(1).subquery())
_OUTBOX_HEAD = outbox_head(messages.c.id, messages.c.next_attempt_at, cast(null(), JSON()).label("payload"),
                           cast(null(), String()).label("phone_number_id"),
                           cast(null(), String()).label("wa_message_id"),
                           cast(null(), Float()).label("received_at")).subquery()
_HEADS = union_all(select(literal("in").label("box"), _INBOX_HEAD),
                   select(literal("out").label("box"), _OUTBOX_HEAD))


def heads(contact_id: int):
    """(inbox head, outbox head) in one round trip: the oldest unanswered inbound row (id, payload,
    phone_number_id, wa_message_id, received_at) and the oldest unsent outbound row (id,
    next_attempt_at), each None when there is none."""
    inbox = outbox = None
    for row in db.session.execute(_HEADS, {"b_contact": contact_id}):
        if row.box == "in":
            inbox = row
        else:
            outbox = row
    return inbox, outbox


def has_work(contact_id: int) -> bool:
    """Whether a message waits for an answer, or the outbox head may be sent now."""
    inbox, outbox = heads(contact_id)
    return inbox is not None or (outbox is not None and (
        outbox.next_attempt_at is None or outbox.next_attempt_at <= utcnow()))


def run_contact(contact_id: int) -> str:
    """The flow job: deliver the contact's outbox and answer its waiting messages, in order.

    After ``TURNS_PER_JOB`` turns, or when the inbox is empty, the lock is released and the
    contact's "queued" marker cleared; work that is still (or newly) waiting gets a new job
    at the back of the queue, so every contact gets its turn.
    """
    lock = ContactLock(get_redis(), contact_id)
    if not lock.acquire():
        return "busy"  # the holder looks at the inbox again when it finishes
    try:
        drain(contact_id, lock, max_turns=TURNS_PER_JOB)
    finally:
        db.session.rollback()
        pipe = get_redis().pipeline(transaction=False)  # one round trip for both
        lock.release(pipe)
        pipe.delete(queued_key(contact_id))
        pipe.execute()
    if has_work(contact_id):
        enqueue_flow_job(contact_id)
        return "requeued"
    return "done"


def recover_stalled(batch: int = 1000) -> int:
    """Re-enqueue contacts whose inbound or outbound messages have waited too long.

    Covers a worker killed mid-job, a lost RQ job and a Redis outage between the
    webhook's commit and its enqueue.
    """
    now = utcnow()
    cutoff = now - STALL_AFTER
    rows = db.session.execute(
        select(Message.contact_id).where(or_(
            and_(Message.direction == "in", Message.processed_at.is_(None), Message.created_at < cutoff),
            and_(Message.direction == "out", Message.status.in_(PENDING),
                 or_(and_(Message.next_attempt_at.is_(None), Message.created_at < cutoff),
                     Message.next_attempt_at < cutoff)),
        )).distinct().limit(batch)
    ).scalars().all()
    queue = get_queue("high")
    for contact_id in rows:
        try:
            queue.enqueue(run_contact, contact_id, job_id=f"recover-{contact_id}", unique=True,
                          result_ttl=30, failure_ttl=FAILURE_TTL)
        except DuplicateJobError:
            pass
    if rows:
        log.warning("re-enqueued %d stalled contact(s)", len(rows), extra={"event": "flow.recover"})
    return len(rows)


def expiry_notice(library: engine.Library, flow_name: str) -> str | None:
    flow = library.flows.get(flow_name)
    own = flow.expired_message if flow is not None else DEFAULT_EXPIRED
    text = get_settings().session_expired_message if own is DEFAULT_EXPIRED else own
    return text or None
