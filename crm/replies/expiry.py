"""Idle flow sessions expire; the user is told (rq-scheduler runs this every 5 minutes).

Set-based and race-safe: each batch is one ``UPDATE ... WHERE status='active'
AND expires_at <= now RETURNING`` that also bumps the session's version. A flow
job that loaded the session before the update fails its own versioned update
and redoes its turn on a fresh conversation; a flow job that committed first
moved ``expires_at`` forward, so the update skips that session. Either way a
session is expired once, and the notice row is committed before any reply to a
newer message, so it is delivered before it (delivery is in row order, under
the contact's lock).
"""

from __future__ import annotations

import logging
import time
from datetime import timedelta

from sqlalchemy import func, insert, or_, select, update

from crm.base import metrics
from crm.base.enums import Direction, EndReason, Origin, SessionStatus
from crm.base.extensions import db, get_settings
from crm.base.models import Contact, Message, utcnow
from crm.replies.delivery import outbound_values
from crm.replies.sessions import end_values, expiry_notice
from crm.replies.wake import wake_many
from flows.models import FlowSession
from flows.store import library_cache
from integrations.whatsapp import messages as wa

log = logging.getLogger("crm.replies.expiry")


def expire_idle_sessions(now=None, batch: int = 1000) -> dict:
    """End every active session idle past its limit and queue each user's notice."""
    settings = get_settings()
    now = now or utcnow()
    started = time.monotonic()
    idle_since = now - timedelta(minutes=settings.session_idle_minutes)
    log.info("[Idle Conversation Cleanup] Running task for conversations idle since %sZ",
             idle_since.isoformat(timespec="seconds"), extra={"event": "sessions.cleanup_start"})
    library = library_cache.get()
    expired = notices = 0
    contacts: list[int] = []
    while True:
        ids = db.session.execute(
            select(FlowSession.id).where(FlowSession.status == SessionStatus.ACTIVE, FlowSession.expires_at <= now)
            .order_by(FlowSession.expires_at).limit(batch)
        ).scalars().all()
        if not ids:
            break
        rows = db.session.execute(
            update(FlowSession)
            .where(FlowSession.id.in_(ids), FlowSession.status == SessionStatus.ACTIVE,
                   FlowSession.expires_at <= now)
            .values(**end_values(EndReason.IDLE, now, status=SessionStatus.EXPIRED))
            .returning(FlowSession.id, FlowSession.contact_id, FlowSession.flow_name)
            .execution_options(synchronize_session=False)
        ).all()
        expired += len(rows)
        texts = {name: expiry_notice(library, name) for name in {r.flow_name for r in rows}}
        silent = _without_consent([r.contact_id for r in rows])
        wanted = [r for r in rows if texts[r.flow_name] and r.contact_id not in silent]
        if wanted:
            numbers = _reply_numbers([r.contact_id for r in wanted]) if wanted else {}
            payload = [
                outbound_values(r.contact_id, numbers.get(r.contact_id) or settings.whatsapp_phone_number_id,
                                wa.text(texts[r.flow_name][: wa.TEXT_MAX]), Origin.EXPIRY, r.id, now,
                                text=texts[r.flow_name])
                for r in wanted
            ]
            db.session.execute(insert(Message), payload)
            notices += len(payload)
            contacts += [r.contact_id for r in wanted]
        db.session.commit()
    handovers = end_idle_handovers(now)
    db_seconds = time.monotonic() - started
    wake_many(contacts)
    metrics.SESSIONS_EXPIRED.inc(expired)
    summary = {"expired": expired, "notices": notices, "handovers_ended": handovers,
               "seconds": round(time.monotonic() - started, 3), "db_seconds": round(db_seconds, 3)}
    log.info("[Idle Conversation Cleanup] Done: %(expired)d session(s) expired, %(notices)d notice(s) "
             "queued in %(seconds).3fs", summary, extra={"event": "sessions.cleanup_done"})
    return summary


def end_idle_handovers(now) -> int:
    """A handover with no message either way for ``HANDOVER_IDLE_HOURS`` ends: the bot answers again.

    Inbound messages (their turn) and operator sends move the session's ``last_activity_at``.
    """
    cutoff = now - timedelta(hours=get_settings().handover_idle_hours)
    ended = db.session.execute(
        update(FlowSession)
        .where(FlowSession.status == SessionStatus.HANDOVER, FlowSession.last_activity_at <= cutoff)
        .values(**end_values(EndReason.HANDOVER_IDLE, now))
        .execution_options(synchronize_session=False)
    ).rowcount
    db.session.commit()
    if ended:
        log.info("%d handover(s) ended after %s h without messages", ended, get_settings().handover_idle_hours,
                 extra={"event": "sessions.handover_idle"})
    return ended


def _without_consent(contact_ids: list[int]) -> set[int]:
    """Contacts that opted out or are blocked: they get no notice."""
    if not contact_ids:
        return set()
    return set(db.session.execute(select(Contact.id).where(
        Contact.id.in_(contact_ids), or_(Contact.opted_out.is_(True), Contact.blocked.is_(True)))).scalars())


def _reply_numbers(contact_ids: list[int]) -> dict[int, str]:
    """The phone number id each contact last wrote to (replies go out from it)."""
    latest = (select(func.max(Message.id)).where(Message.direction == Direction.IN, Message.contact_id.in_(contact_ids))
              .group_by(Message.contact_id))
    rows = db.session.execute(select(Message.contact_id, Message.phone_number_id).where(Message.id.in_(latest)))
    return {r.contact_id: r.phone_number_id for r in rows}


def cleanup_job() -> dict:
    """The scheduled job (runs inside a worker's app context)."""
    return expire_idle_sessions()
