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
import time
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import bindparam, func, select

from crm import metrics
from crm.extensions import db, get_settings
from crm.models import Message, utcnow, window_open
from integrations.whatsapp import messages as wa
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


# The hot path uses prebuilt table statements: no identity map to reload after each commit,
# no unit-of-work flush, and SQLAlchemy's cache key is computed once per statement.
messages = Message.__table__
_OUT_COLUMNS = (messages.c.id, messages.c.type, messages.c.payload, messages.c.phone_number_id,
                messages.c.callback_id, messages.c.attempts, messages.c.next_attempt_at)


def outbox_head(*columns):
    """SELECT ``columns`` of the oldest unsent row of the contact bound as ``b_contact``."""
    return (select(*columns)
            .where(messages.c.contact_id == bindparam("b_contact"), messages.c.direction == "out",
                   messages.c.status.in_(PENDING))
            .order_by(messages.c.id).limit(1))


_HEAD = outbox_head(*_OUT_COLUMNS).where(messages.c.id > bindparam("b_after"))
_CLAIM = (messages.update().where(messages.c.id == bindparam("b_id"))
          .values(status="sending", attempts=messages.c.attempts + 1, last_attempt_at=bindparam("b_now"),
                  next_attempt_at=bindparam("b_deadline")))
_SENT = (messages.update().where(messages.c.id == bindparam("b_id"))
         .values(status="sent", wa_message_id=bindparam("b_wamid"), next_attempt_at=None,
                 sent_at=func.coalesce(messages.c.sent_at, bindparam("b_now")),
                 error_code=None, error_title=None, error_details=None))
_RETRY = (messages.update().where(messages.c.id == bindparam("b_id"))
          .values(status=bindparam("b_status"), next_attempt_at=bindparam("b_next"),
                  error_code=bindparam("b_code"), error_title=bindparam("b_title"),
                  error_details=bindparam("b_details")))
_FAIL = (messages.update().where(messages.c.id == bindparam("b_id"))
         .values(status="failed", failed_at=bindparam("b_now"), next_attempt_at=None,
                 error_code=bindparam("b_code"), error_title=bindparam("b_title"),
                 error_details=bindparam("b_details")))


@dataclass(frozen=True)
class Outgoing:
    """What sending one outbound row needs, read once."""

    id: int
    type: str
    payload: dict
    phone_number_id: str
    callback_id: str | None
    attempts: int
    next_attempt_at: datetime | None


def next_pending(contact_id: int, after: int = 0) -> Outgoing | None:
    """The head of the contact's outbox (the oldest queued or sending row after ``after``)."""
    row = db.session.execute(_HEAD, {"b_contact": contact_id, "b_after": after}).first()
    return Outgoing(*row) if row is not None else None


def outbound_values(contact_id: int, phone_number_id: str, message: dict, origin: str,
                    session_id: int | None, now: datetime, text: str | None = None) -> dict:
    """The columns of a new outbound row, queued (every writer of the outbox uses these)."""
    return {"contact_id": contact_id, "direction": "out", "type": message["type"],
            "text": text if text is not None else wa.summary(message), "payload": message,
            "phone_number_id": phone_number_id, "status": "queued", "origin": origin,
            "callback_id": Message.new_callback_id(), "flow_session_id": session_id, "attempts": 0,
            "created_at": now, "next_attempt_at": None}


def claim_new(values: dict, now: datetime) -> None:
    """Insert values for an outbound row claimed at once (what ``claim`` does to a stored row)."""
    values.update(status="sending", attempts=1, last_attempt_at=now, next_attempt_at=now + UNKNOWN_OUTCOME_GRACE)


def claim(head: Outgoing, now: datetime) -> Outgoing:
    """Mark a row as being sent, in the caller's transaction: commit before the request."""
    db.session.execute(_CLAIM, {"b_id": head.id, "b_now": now, "b_deadline": now + UNKNOWN_OUTCOME_GRACE})
    return Outgoing(head.id, head.type, head.payload, head.phone_number_id, head.callback_id,
                    head.attempts + 1, now + UNKNOWN_OUTCOME_GRACE)


def _claim_if_sendable(head: Outgoing | None, last_inbound_at, now) -> Outgoing | None:
    """Claim ``head`` when it may go out now; the next delivery pass handles anything else."""
    if head is None or (head.next_attempt_at is not None and head.next_attempt_at > now):
        return None
    if head.type != "template" and not window_open(last_inbound_at, now):
        return None
    return claim(head, now)


def deliver_due(contact_id: int, wa_id: str, last_inbound_at: datetime | None, on_sent=None, extend=None,
                claimed: Outgoing | None = None, then: list[Outgoing] | None = None) -> datetime | None:
    """Send the contact's due messages in order.

    Returns when the head message will next be due (the caller schedules a wake-up),
    or None when nothing is left waiting. ``claimed`` is a head row the caller already
    committed as ``sending``, and ``then`` the rows it knows follow it (a turn's other
    messages): the outbox is not read again until they are sent. ``on_sent(message_id,
    when)`` is called after each accepted send, in the transaction that records it;
    ``extend()`` after each request (to keep the lock). One commit per accepted message:
    it records the send and claims the next row.
    """
    settings = get_settings()
    client = get_client()
    while True:
        if claimed is None:
            then = None  # reading the outbox again: it tells what follows
            head = next_pending(contact_id)
            if head is None:
                return None
            now = utcnow()
            if head.next_attempt_at is not None and head.next_attempt_at > now:
                return head.next_attempt_at
            if head.type != "template" and not window_open(last_inbound_at, now):
                _fail(contact_id, head.id, now, SendResult(
                    ok=False, error_code=OUTSIDE_WINDOW_CODE,
                    error_title="outside the 24-hour customer service window (refused locally): send a template"))
                continue
            claimed = claim(head, now)
            db.session.commit()
        msg, claimed = claimed, None
        result = client.send(msg.phone_number_id, wa_id, msg.payload, msg.callback_id)
        if extend:
            extend()
        now = utcnow()
        if result.ok:
            db.session.execute(_SENT, {"b_id": msg.id, "b_wamid": result.wa_message_id, "b_now": now})
            if on_sent:
                on_sent(msg.id, time.time())
            if then is not None:  # rows queued meanwhile by others wait for the caller's next pass
                following = then.pop(0) if then else None
            else:
                following = next_pending(contact_id, after=msg.id)
            claimed = _claim_if_sendable(following, last_inbound_at, now)
            db.session.commit()
            metrics.SENDS.labels("sent", "").inc()
            if following is None:  # ``msg`` was the head: nothing is left
                return None
            continue
        metrics.SENDS.labels("retry" if result.retryable else "failed", str(result.error_code or "")).inc()
        if result.retryable and msg.attempts < settings.whatsapp_max_attempts:
            delay = backoff(msg.attempts)
            status = "sending" if result.outcome_unknown else "queued"
            if result.outcome_unknown:
                delay = max(delay, UNKNOWN_OUTCOME_GRACE)
            db.session.execute(_RETRY, {"b_id": msg.id, "b_status": status, "b_next": now + delay,
                                        "b_code": result.error_code, "b_title": result.error_title,
                                        "b_details": result.error_details})
            db.session.commit()
            log.warning("send to contact %s failed (%s %s), attempt %s, retry in %.1fs", contact_id,
                        result.http_status or "", result.error_title, msg.attempts, delay.total_seconds(),
                        extra={"event": "send.retry", "contact_id": contact_id})
            return now + delay
        _fail(contact_id, msg.id, now, result)


def _fail(contact_id: int, message_id: int, now: datetime, result: SendResult) -> None:
    db.session.execute(_FAIL, {"b_id": message_id, "b_now": now, "b_code": result.error_code,
                               "b_title": result.error_title, "b_details": result.error_details})
    db.session.commit()
    log.error("message %s failed for good: %s %s", message_id, result.error_code, result.error_title,
              extra={"event": "send.failed", "contact_id": contact_id})
