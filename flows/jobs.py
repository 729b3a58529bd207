"""Flow jobs (queue ``high``): one contact at a time, all contacts in parallel.

``run_contact(contact_id)`` takes the contact's lock and works through its
inbox (unprocessed inbound rows, oldest first) and outbox (queued rows, in
order) until both are empty. A job that finds the lock taken returns at once:
the holder re-checks the inbox after releasing, so nothing waits forever.

The database is the inbox, so nothing is lost when a worker dies or Redis
blips: ``recover_stalled`` (every minute) re-enqueues contacts whose messages
have waited too long.
"""

from __future__ import annotations

import logging
import time
from datetime import timedelta

from rq.exceptions import DuplicateJobError
from sqlalchemy import and_, or_, select
from sqlalchemy.orm.exc import StaleDataError

from crm import metrics
from crm.delivery import PENDING, deliver_due, get_client, has_due
from crm.extensions import FAILURE_TTL, RESULT_TTL, db, get_queue, get_redis, get_settings
from crm.locks import ContactLock
from crm.models import Contact, Message, utcnow
from flows import engine
from flows.document import DEFAULT_EXPIRED
from flows.models import OPEN_STATUSES, FlowSession
from flows.store import library_cache
from integrations.whatsapp import messages as wa
from integrations.whatsapp.inbound import describe

log = logging.getLogger(__name__)
STALL_AFTER = timedelta(seconds=30)
# Turns one job may take before yielding to other contacts (None: drain the inbox). Measured
# on the 20 users x 5 messages scenario (SQLite, 2 cores): 1 turn per job made latency fair
# (p50 585 ms, p99 1069 ms) but cost an extra job per message (-25 % replies/s); draining gives
# p50 ~40 ms, p99 ~1.7 s and more throughput. See the notes of issue #5.
TURNS_PER_JOB: int | None = None


def actions() -> dict:
    """Registered flow actions (name -> callable(params, context))."""
    from flows.actions import registry

    return registry()


def open_session(contact_id: int) -> FlowSession | None:
    return db.session.execute(
        select(FlowSession).where(FlowSession.contact_id == contact_id, FlowSession.status.in_(OPEN_STATUSES))
        .order_by(FlowSession.id.desc()).limit(1)
    ).scalar_one_or_none()


def next_inbound(contact_id: int) -> Message | None:
    return db.session.execute(
        select(Message).where(Message.contact_id == contact_id, Message.direction == "in",
                              Message.processed_at.is_(None)).order_by(Message.id).limit(1)
    ).scalar_one_or_none()


def idle_minutes(library: engine.Library, flow_name: str) -> float:
    flow = library.flows.get(flow_name)
    if flow is not None and flow.settings.idle_minutes:
        return flow.settings.idle_minutes
    return get_settings().session_idle_minutes


def queue_outbound(contact: Contact, phone_number_id: str, message: dict, origin: str,
                   session_id: int | None = None, now=None) -> Message:
    row = Message(contact_id=contact.id, direction="out", type=message["type"], text=wa.summary(message),
                  payload=message, phone_number_id=phone_number_id, status="queued", origin=origin,
                  callback_id=Message.new_callback_id(), flow_session_id=session_id, attempts=0,
                  created_at=now or utcnow())
    db.session.add(row)
    return row


def process_inbound(msg: Message, contact: Contact) -> engine.Turn | None:
    """Run the engine for one inbound message and commit everything it produced at once."""
    now = utcnow()
    if contact.blocked:
        msg.processed_at = now
        db.session.commit()
        return None
    settings = get_settings()
    library = library_cache.get()
    row = open_session(contact.id)
    kind, text, reply_id = describe(msg.payload)
    inbound = engine.Inbound(type=kind, text=text, reply_id=reply_id, payload=msg.payload)
    turn = engine.handle(library, session_of(row), inbound, contact.to_context(),
                         engine.EngineSettings.from_settings(settings), actions())
    row = apply_turn(turn, contact, row, library, msg.phone_number_id, now)
    msg.processed_at, msg.flow_session_id = now, row.id if row else None
    db.session.commit()
    return turn


def session_of(row: FlowSession | None) -> engine.Session:
    if row is None:
        return engine.Session()
    return engine.Session.from_row(row.flow_name, row.step_id, row.status, row.state, row.flow_version)


def apply_turn(turn: engine.Turn, contact: Contact, row: FlowSession | None, library: engine.Library,
               phone_number_id: str, now) -> FlowSession | None:
    """Write a turn's session, contact changes and outbound rows into the open transaction."""
    new = turn.session
    for effect in turn.effects:
        if effect.kind == "set_contact_field":
            contact.custom_fields = {**(contact.custom_fields or {}), effect.data["name"]: effect.data["value"]}
        elif effect.kind == "opt_out":
            contact.opted_out = True
        elif effect.kind == "opt_in":
            contact.opted_out = False
        elif effect.kind == "error":
            log.warning("flow error: %s", effect.data, extra={"event": "flow.error", "contact_id": contact.id})
    ends = [e.data["reason"] for e in turn.effects if e.kind == "session_ended"]
    if turn.effect("session_started") is not None:
        if row is not None:  # the old session ends where the new one starts
            _close(row, ends.pop(0) if ends else "restarted", now)
        row = FlowSession(contact_id=contact.id, flow_name=new.flow, flow_version=new.flow_version or 1,
                          started_at=now, status="active", state={})
        db.session.add(row)
    if row is not None:
        row.flow_name, row.flow_version = new.flow, new.flow_version or row.flow_version
        row.step_id, row.state, row.last_activity_at = new.step, new.to_state(), now
        if new.status in OPEN_STATUSES:
            row.status = new.status
            minutes = idle_minutes(library, new.flow)
            row.expires_at = now + timedelta(minutes=minutes) if new.status == "active" else None
        else:
            _close(row, ends[-1] if ends else "completed", now)
    db.session.flush()
    for message in turn.messages:
        queue_outbound(contact, phone_number_id, message, "flow", row.id if row else None, now)
    return row


def start_flow_for(contact: Contact, flow_name: str) -> engine.Turn:
    """An operator starts a flow: end the open session, run the flow's first steps, commit.

    The caller holds the contact's lock and enqueues delivery afterwards.
    """
    settings, library, now = get_settings(), library_cache.get(), utcnow()
    row = open_session(contact.id)
    turn = engine.start_flow(library, session_of(row), flow_name, contact.to_context(),
                             engine.EngineSettings.from_settings(settings), actions())
    if row is not None and row.status == "handover":
        _close(row, "replaced", now)
        row = None
    apply_turn(turn, contact, row, library, settings.whatsapp_phone_number_id, now)
    db.session.commit()
    return turn


def enqueue_delivery(contact_id: int) -> None:
    """Deliver a contact's queued messages soon (operator sends, started flows)."""
    get_queue("high").enqueue(run_contact, contact_id, result_ttl=RESULT_TTL, failure_ttl=FAILURE_TTL)


def _close(row: FlowSession, reason: str, now) -> None:
    row.status, row.end_reason, row.ended_at, row.expires_at = "ended", reason, now, None


def _turn_with_retry(msg_id: int, contact_id: int) -> tuple[Message, Contact, engine.Turn | None]:
    """The idle-session cleanup may expire the session under us: then redo the turn."""
    for _attempt in range(3):
        msg = db.session.get(Message, msg_id)
        contact = db.session.get(Contact, contact_id)
        try:
            return msg, contact, process_inbound(msg, contact)
        except StaleDataError:
            db.session.rollback()
            db.session.expire_all()
            log.info("session changed during the turn; redoing it", extra={"contact_id": contact_id})
    raise RuntimeError(f"could not commit a turn for contact {contact_id} after 3 tries")


def drain(contact_id: int, lock: ContactLock, max_turns: int | None = None) -> None:
    """Deliver the outbox, then answer waiting messages (at most ``max_turns``), in order."""
    settings = get_settings()
    outbox_clear = False  # known to be empty since the last delivery pass
    turns = 0
    while max_turns is None or turns < max_turns:
        contact = db.session.get(Contact, contact_id)
        if contact is None:
            return
        if not outbox_clear:
            due = deliver_due(contact, extend=lock.extend)
            if due is not None:
                schedule_wake(contact_id, due)
        msg = next_inbound(contact_id)
        if msg is None:
            return
        msg_id, received_at = msg.id, msg.received_at
        msg, contact, turn = _turn_with_retry(msg_id, contact_id)
        first_sent: list[float] = []

        def on_sent(_out: Message, inbound: Message = msg, sent: list = first_sent, since=received_at) -> None:
            if not sent:
                sent.append(time.time())
                if since:
                    inbound.reply_ms = round((sent[0] - since) * 1000, 1)

        due = deliver_due(contact, on_sent=on_sent, extend=lock.extend)
        if due is not None:
            schedule_wake(contact_id, due)
        outbox_clear = due is None
        latency_ms = msg.reply_ms if first_sent else None
        if latency_ms is not None:
            metrics.REPLY_LATENCY.observe(latency_ms / 1000)
        session = turn.session if turn else None
        log.info("processed message %s", msg_id, extra={
            "event": "flow.turn", "contact_id": contact_id, "flow": session.flow if session else None,
            "step": session.step if session else None, "ms": latency_ms})
        if turn is not None and not contact.blocked and session.status != "handover":
            # Read receipt after the reply: it must never hold the reply back. The typing
            # indicator only makes sense while a reply is still on its way.
            typing = due is not None
            get_client().mark_read(msg.phone_number_id or settings.whatsapp_phone_number_id,
                                   msg.wa_message_id, typing=typing)
        lock.extend()
        turns += 1


def schedule_wake(contact_id: int, when) -> None:
    delay = max(0.0, (when - utcnow()).total_seconds())
    get_queue("high").enqueue_in(timedelta(seconds=delay + 0.05), run_contact, contact_id,
                                 result_ttl=RESULT_TTL, failure_ttl=FAILURE_TTL)


def has_work(contact_id: int) -> bool:
    return next_inbound(contact_id) is not None or has_due(contact_id, utcnow())


def run_contact(contact_id: int) -> str:
    """The flow job: deliver the contact's outbox and answer its waiting messages, in order.

    After ``TURNS_PER_JOB`` turns, or when the inbox is empty, the lock is released; work
    that is still (or newly) waiting gets a new job at the back of the queue.
    """
    lock = ContactLock(get_redis(), contact_id)
    if not lock.acquire():
        return "busy"  # the holder re-checks for waiting work after it releases the lock
    try:
        drain(contact_id, lock, max_turns=TURNS_PER_JOB)
    finally:
        db.session.rollback()
        lock.release()
    if has_work(contact_id):
        get_queue("high").enqueue(run_contact, contact_id, result_ttl=0, failure_ttl=FAILURE_TTL)
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
