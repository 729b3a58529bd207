"""Stalled-work recovery (every minute, queue ``default``): wake contacts whose work waited too long.

Covers a worker killed mid-task, a lost RQ job and a Redis outage between the webhook's
commit and its wake. It cannot switch itself off: it goes through ``wake`` (no fixed job id
that a failed job's hash would block for a week), scans the oldest stalled messages first
with a bound per pass, and logs the contacts it really woke (a contact whose task is still
queued is not woken twice).
"""

from __future__ import annotations

import logging
from datetime import timedelta

from sqlalchemy import and_, func, or_, select

from crm.base.enums import PENDING, Direction
from crm.base.extensions import db
from crm.base.models import Message, utcnow
from crm.replies.wake import wake_many

log = logging.getLogger(__name__)
STALL_AFTER = timedelta(seconds=30)


def stalled_contacts(limit: int, now=None) -> list[int]:
    """Contacts with an inbound message unanswered or an outbound one unsent for ``STALL_AFTER``,
    the longest waiting first."""
    cutoff = (now or utcnow()) - STALL_AFTER
    waiting = (select(Message.contact_id, func.min(Message.id).label("oldest"))
               .where(or_(
                   and_(Message.direction == Direction.IN, Message.processed_at.is_(None),
                        Message.created_at < cutoff),
                   and_(Message.direction == Direction.OUT, Message.status.in_(PENDING),
                        or_(and_(Message.next_attempt_at.is_(None), Message.created_at < cutoff),
                            Message.next_attempt_at < cutoff))))
               .group_by(Message.contact_id).subquery())
    return list(db.session.execute(
        select(waiting.c.contact_id).order_by(waiting.c.oldest).limit(limit)).scalars())


def recover_stalled(batch: int = 1000) -> int:
    """Wake up to ``batch`` stalled contacts, oldest first. Returns how many were really woken."""
    contacts = stalled_contacts(batch)
    woken = wake_many(contacts)
    if woken:
        log.warning("woke %d stalled contact(s): %s", len(woken), ", ".join(map(str, woken[:50])),
                    extra={"event": "flow.recover"})
    return len(woken)
