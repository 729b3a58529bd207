"""Ordered, retried delivery of a contact's outbound messages.

Every outbound message is a row before it is sent. A contact's rows go out one
after another in id order, each only after the previous one was accepted (or
failed for good). A retryable failure parks the head row with a backoff and
the rows behind it wait. Callers hold the contact's lock.

Never twice: a row is marked ``sending`` (with a grace deadline) and committed
before the request. If the answer is lost (read timeout, crash), the row stays
``sending`` until the deadline; a status webhook carrying its
``biz_opaque_callback_data`` marks it sent in the meantime, otherwise it is
resent after the deadline.
"""

from __future__ import annotations

import logging
import random
from datetime import datetime, timedelta

from sqlalchemy import select

from crm import metrics
from crm.extensions import db, get_settings
from crm.models import Contact, Message, utcnow
from integrations.whatsapp.client import SendResult, WhatsAppClient

log = logging.getLogger(__name__)

PENDING = ("queued", "sending")
UNKNOWN_OUTCOME_GRACE = timedelta(seconds=20)
OUTSIDE_WINDOW_CODE = 131047
_client: WhatsAppClient | None = None


def get_client() -> WhatsAppClient:
    global _client
    settings = get_settings()
    if _client is None or _client.token != settings.whatsapp_access_token:
        _client = WhatsAppClient(settings)
    return _client


def backoff(attempt: int, base: float = 2.0, cap: float = 120.0) -> timedelta:
    """Exponential backoff with jitter: about 2, 4, 8, 16 s ... (50-100% of the step)."""
    step = min(cap, base * 2 ** (attempt - 1))
    return timedelta(seconds=step * random.uniform(0.5, 1.0))


def next_pending(contact_id: int) -> Message | None:
    return db.session.execute(
        select(Message).where(Message.contact_id == contact_id, Message.direction == "out",
                              Message.status.in_(PENDING)).order_by(Message.id).limit(1)
    ).scalar_one_or_none()


def has_due(contact_id: int, now: datetime) -> bool:
    """Whether the head of the contact's outbox may be sent now (later messages wait for it)."""
    head = db.session.execute(
        select(Message.next_attempt_at).where(
            Message.contact_id == contact_id, Message.direction == "out", Message.status.in_(PENDING))
        .order_by(Message.id).limit(1)
    ).first()
    return head is not None and (head[0] is None or head[0] <= now)


def deliver_due(contact: Contact, on_sent=None, wake=None, extend=None) -> datetime | None:
    """Send the contact's due messages in order.

    Returns when the head message will next be due (the caller schedules a wake-up),
    or None when nothing is left waiting. ``on_sent(message)`` is called after each
    accepted send, before its commit; ``extend()`` after each request (to keep the lock).
    """
    settings = get_settings()
    client = get_client()
    # Values read once: every commit below expires the ORM objects, and reading an expired
    # attribute costs a SELECT.
    contact_id, wa_id = contact.id, contact.wa_id
    while True:
        msg = next_pending(contact_id)
        if msg is None:
            return None
        now = utcnow()
        if msg.next_attempt_at is not None and msg.next_attempt_at > now:
            return msg.next_attempt_at
        if msg.type != "template" and not contact.window_open(now):
            _fail(msg, now, SendResult(ok=False, error_code=OUTSIDE_WINDOW_CODE,
                                       error_title="outside the 24-hour customer service window "
                                                   "(refused locally): send a template"))
            continue
        request = (msg.phone_number_id, wa_id, msg.payload, msg.callback_id)
        msg.status, msg.attempts, msg.last_attempt_at = "sending", msg.attempts + 1, now
        msg.next_attempt_at = now + UNKNOWN_OUTCOME_GRACE
        db.session.commit()
        result = client.send(*request)
        if extend:
            extend()
        now = utcnow()
        if result.ok:
            msg.status, msg.wa_message_id, msg.next_attempt_at = "sent", result.wa_message_id, None
            msg.sent_at = msg.sent_at or now
            msg.error_code = msg.error_title = msg.error_details = None
            if on_sent:  # before the commit, so that what it records is written with the status
                on_sent(msg)
            db.session.commit()
            metrics.SENDS.labels("sent", "").inc()
            continue
        metrics.SENDS.labels("retry" if result.retryable else "failed", str(result.error_code or "")).inc()
        if result.retryable and msg.attempts < settings.whatsapp_max_attempts:
            delay = backoff(msg.attempts)
            if result.outcome_unknown:
                delay = max(delay, UNKNOWN_OUTCOME_GRACE)
            else:
                msg.status = "queued"
            msg.next_attempt_at = now + delay
            msg.error_code, msg.error_title, msg.error_details = (result.error_code, result.error_title,
                                                                  result.error_details)
            db.session.commit()
            log.warning("send to contact %s failed (%s %s), attempt %s, retry in %.1fs", contact_id,
                        result.http_status or "", result.error_title, msg.attempts, delay.total_seconds(),
                        extra={"event": "send.retry", "contact_id": contact_id})
            return msg.next_attempt_at
        _fail(msg, now, result)


def _fail(msg: Message, now: datetime, result: SendResult) -> None:
    msg.status, msg.failed_at, msg.next_attempt_at = "failed", now, None
    msg.error_code, msg.error_title, msg.error_details = result.error_code, result.error_title, result.error_details
    db.session.commit()
    log.error("message %s failed for good: %s %s", msg.id, result.error_code, result.error_title,
              extra={"event": "send.failed", "contact_id": msg.contact_id})
