"""Ordered, retried delivery of a contact's outbound messages.

Every outbound message is a row before it is sent. A contact's rows go out one
after another in id order, each only after the previous one was accepted (or
failed for good). A retryable failure parks the head row with a backoff and
the rows behind it wait. Callers hold the contact's lock; a pass stops (LockLost)
before its next request once the lock is no longer its own.

Consent at send time: nothing goes to a blocked contact, and nothing but the
opt-out confirmation (origin ``consent``) to an opted-out one, whoever queued it
(flow, operator, a retry, expiry, football). Such rows fail locally.

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
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import Float, bindparam, func, select

from crm.base import hot_sql, metrics
from crm.base.enums import Direction, MessageStatus, Origin
from crm.base.extensions import db, get_settings
from crm.base.locks import ContactLock
from crm.base.models import UNSENT, Message, utcnow, window_open
from integrations.whatsapp import messages as wa
from integrations.whatsapp.client import SendResult, WhatsAppClient
from integrations.whatsapp.simulator import SimulatorClient

log = logging.getLogger(__name__)

UNKNOWN_OUTCOME_GRACE = timedelta(seconds=20)
OUTSIDE_WINDOW_CODE = 131047
# Refused here, before any request: the contact opted out or is blocked (Meta's code for a
# recipient who cannot be reached is 131026; ours is local and says why).
NO_CONSENT_CODE = 131050
_client: WhatsAppClient | None = None


def get_client() -> WhatsAppClient:
    global _client
    settings = get_settings()
    if _client is None or _client.token != settings.whatsapp_access_token:
        _client = WhatsAppClient(settings)
    return _client


def backoff(attempt: int, base: float = 2.0, cap: float = 120.0) -> timedelta:
    """Exponential backoff with jitter: about 2, 4, 8, 16 s ... (50-100% of the step)."""
    # A float exponent past 1023 overflows; the cap was reached long before (WHATSAPP_MAX_ATTEMPTS has no upper bound).
    step = min(cap, base * 2.0 ** min(attempt - 1, 1023))
    return timedelta(seconds=step * random.uniform(0.5, 1.0))


# The hot path uses prebuilt table statements: no identity map to reload after each commit,
# no unit-of-work flush, and SQLAlchemy's cache key is computed once per statement.
messages = Message.__table__
_OUT_COLUMNS = (messages.c.id, messages.c.type, messages.c.payload, messages.c.phone_number_id,
                messages.c.callback_id, messages.c.attempts, messages.c.next_attempt_at, messages.c.origin)


def outbox_head(*columns):
    """SELECT ``columns`` of the oldest unsent row of the contact bound as ``b_contact``."""
    return (select(*columns)
            .where(messages.c.contact_id == bindparam("b_contact"), *UNSENT)  # ix_messages_unsent
            .order_by(messages.c.id).limit(1))


_HEAD = outbox_head(*_OUT_COLUMNS).where(messages.c.id > bindparam("b_after"))
_CLAIM = (messages.update().where(messages.c.id == bindparam("b_id"))
          .values(status=MessageStatus.SENDING, attempts=messages.c.attempts + 1, last_attempt_at=bindparam("b_now"),
                  next_attempt_at=bindparam("b_deadline")))
# reply_ms rides on the send's own UPDATE (the first reply of a turn): on PostgreSQL each
# statement is the server's work (README, Performance), and this was one more per reply.
_SENT = (messages.update().where(messages.c.id == bindparam("b_id"))
         .values(status=MessageStatus.SENT, wa_message_id=bindparam("b_wamid"), next_attempt_at=None,
                 sent_at=func.coalesce(messages.c.sent_at, bindparam("b_now")),
                 reply_ms=func.coalesce(bindparam("b_ms", type_=Float), messages.c.reply_ms),
                 error_code=None, error_title=None, error_details=None))
_RETRY = (messages.update().where(messages.c.id == bindparam("b_id"))
          .values(status=bindparam("b_status"), next_attempt_at=bindparam("b_next"),
                  error_code=bindparam("b_code"), error_title=bindparam("b_title"),
                  error_details=bindparam("b_details")))
_FAIL = (messages.update().where(messages.c.id == bindparam("b_id"))
         .values(status=MessageStatus.FAILED, failed_at=bindparam("b_now"), next_attempt_at=None,
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
    origin: str | None = None


def next_pending(contact_id: int, after: int = 0) -> Outgoing | None:
    """The head of the contact's outbox (the oldest queued or sending row after ``after``)."""
    row = hot_sql.execute(_HEAD, {"b_contact": contact_id, "b_after": after}).first()
    return Outgoing(*row) if row is not None else None


def outbound_values(contact_id: int, phone_number_id: str, message: dict, origin: Origin,
                    session_id: int | None, now: datetime, text: str | None = None) -> dict:
    """The columns of a new outbound row, queued (every writer of the outbox uses these)."""
    return {"contact_id": contact_id, "direction": Direction.OUT, "type": message["type"],
            "text": text if text is not None else wa.summary(message), "payload": message,
            "phone_number_id": phone_number_id, "status": MessageStatus.QUEUED, "origin": origin,
            "callback_id": Message.new_callback_id(), "flow_session_id": session_id, "attempts": 0,
            "created_at": now, "next_attempt_at": None}


def claim_new(values: dict, now: datetime) -> None:
    """Insert values for an outbound row claimed at once (what ``claim`` does to a stored row)."""
    values.update(status=MessageStatus.SENDING, attempts=1, last_attempt_at=now,
                  next_attempt_at=now + UNKNOWN_OUTCOME_GRACE)


def claim(head: Outgoing, now: datetime) -> Outgoing:
    """Mark a row as being sent, in the caller's transaction: commit before the request."""
    hot_sql.execute(_CLAIM, {"b_id": head.id, "b_now": now, "b_deadline": now + UNKNOWN_OUTCOME_GRACE})
    return Outgoing(head.id, head.type, head.payload, head.phone_number_id, head.callback_id,
                    head.attempts + 1, now + UNKNOWN_OUTCOME_GRACE, head.origin)


def queue_outbound(contact, phone_number_id: str, message: dict, origin: Origin,
                   session_id: int | None = None, now=None) -> Message:
    """Add a message to the contact's outbox in the open ORM transaction (operator and system sends).

    The caller commits, then wakes the contact (``crm.replies.wake``).
    """
    row = Message(**outbound_values(contact.id, phone_number_id, message, origin, session_id, now or utcnow()))
    db.session.add(row)
    return row


@dataclass
class OutboxPass:
    """One delivery pass over a contact's outbox, under the contact's lock.

    ``claimed`` is a head row the caller already committed as ``sending`` and ``then`` the rows
    it knows follow it (a turn's other messages): the outbox is not read again until they are
    sent. ``replying_to``: when the webhook received the message these rows answer (epoch
    seconds); the first accepted send records the time since then as its ``reply_ms`` (also left
    in ``self.reply_ms``). ``opted_out``/``blocked`` are the contact's consent, read by the caller.
    Messages go to the phone number ``wa_id``, or to the business-scoped ``user_id`` when the
    contact has no phone number.
    """

    contact_id: int
    wa_id: str | None
    last_inbound_at: datetime | None
    lock: ContactLock | None = None
    opted_out: bool = False
    blocked: bool = False
    claimed: Outgoing | None = None
    then: list[Outgoing] | None = None
    replying_to: float | None = None
    reply_ms: float | None = None
    sent: list[int] = field(default_factory=list)
    user_id: str | None = None
    # Where the messages go: None is the Graph API (``get_client()``); serve_contact passes
    # the simulator's sink for test contacts (``contacts.is_test``).
    client: WhatsAppClient | SimulatorClient | None = None

    def may_send(self, row: Outgoing) -> bool:
        if self.blocked:
            return False
        return not self.opted_out or row.origin == Origin.CONSENT

    def sendable(self, head: Outgoing | None, now: datetime) -> Outgoing | None:
        """Claim ``head`` when it may go out now; the next pass reads anything else again."""
        if head is None or (head.next_attempt_at is not None and head.next_attempt_at > now):
            return None
        if not self.may_send(head) or (head.type != "template" and not window_open(self.last_inbound_at, now)):
            return None
        return claim(head, now)

    def run(self) -> datetime | None:
        """Send the due messages in order; one commit per accepted message (it records the send
        and claims the next row).

        Returns when the head message will next be due (the caller wakes the contact then), or
        None when nothing is left waiting.
        """
        settings = get_settings()
        client = self.client or get_client()
        claimed, then = self.claimed, self.then
        while True:
            if claimed is None:
                then = None  # reading the outbox again: it tells what follows
                head = next_pending(self.contact_id)
                if head is None:
                    return None
                now = utcnow()
                if head.next_attempt_at is not None and head.next_attempt_at > now:
                    return head.next_attempt_at
                if not self.may_send(head):
                    _fail(self.contact_id, head.id, now, SendResult(
                        ok=False, error_code=NO_CONSENT_CODE,
                        error_title="not sent: the contact is blocked" if self.blocked
                        else "not sent: the contact opted out (refused locally)"))
                    continue
                if head.type != "template" and not window_open(self.last_inbound_at, now):
                    _fail(self.contact_id, head.id, now, SendResult(
                        ok=False, error_code=OUTSIDE_WINDOW_CODE,
                        error_title="outside the 24-hour customer service window (refused locally): send a template"))
                    continue
                claimed = claim(head, now)
                db.session.commit()
            if self.lock is not None:
                self.lock.extend()  # LockLost: another task owns the contact now; it resends after the grace
            msg, claimed = claimed, None
            result = client.send(msg.phone_number_id, self.wa_id, msg.payload, msg.callback_id,
                                 user_id=self.user_id)
            now = utcnow()
            if result.ok:
                ms = None
                if self.replying_to and self.reply_ms is None:  # the first reply to the message
                    self.reply_ms = ms = round((time.time() - self.replying_to) * 1000, 1)
                sent = {"b_id": msg.id, "b_wamid": result.wa_message_id, "b_now": now, "b_ms": ms}
                self.sent.append(msg.id)
                if then is not None and not then:  # the turn's last message: the UPDATE is all there is to write
                    hot_sql.execute_alone(_SENT, sent)  # rows queued meanwhile by others wait for the next pass
                    following = None
                else:
                    hot_sql.execute(_SENT, sent)
                    following = then.pop(0) if then else next_pending(self.contact_id, after=msg.id)
                    claimed = self.sendable(following, now)
                    db.session.commit()
                metrics.SENDS.labels("sent", "").inc()
                if following is None:  # ``msg`` was the head: nothing is left
                    return None
                continue
            metrics.SENDS.labels("retry" if result.retryable else "failed", str(result.error_code or "")).inc()
            if result.retryable and msg.attempts < settings.whatsapp_max_attempts:
                delay = backoff(msg.attempts)
                status = MessageStatus.SENDING if result.outcome_unknown else MessageStatus.QUEUED
                if result.outcome_unknown:
                    delay = max(delay, UNKNOWN_OUTCOME_GRACE)
                hot_sql.execute(_RETRY, {"b_id": msg.id, "b_status": status, "b_next": now + delay,
                                         "b_code": result.error_code, "b_title": result.error_title,
                                         "b_details": result.error_details})
                db.session.commit()
                log.warning("send to contact %s failed (%s %s), attempt %s, retry in %.1fs", self.contact_id,
                            result.http_status or "", result.error_title, msg.attempts, delay.total_seconds(),
                            extra={"event": "send.retry", "contact_id": self.contact_id})
                return now + delay
            _fail(self.contact_id, msg.id, now, result)


def _fail(contact_id: int, message_id: int, now: datetime, result: SendResult) -> None:
    hot_sql.execute(_FAIL, {"b_id": message_id, "b_now": now, "b_code": result.error_code,
                            "b_title": result.error_title, "b_details": result.error_details})
    db.session.commit()
    log.error("message %s failed for good: %s %s", message_id, result.error_code, result.error_title,
              extra={"event": "send.failed", "contact_id": contact_id})
