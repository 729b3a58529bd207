"""Serving a contact: the one entry point for a contact's work.

``serve_contact(contact_id)`` takes the contact's lock, delivers its outbox (queued rows, in
order) and answers the oldest unanswered inbound message; then, if more is waiting, the
contact goes to the back of the ready list (``wake``), so every contact gets its turn. A
server that finds the lock taken (an operator action, another server) clears the queued
marker and returns: the holder looks at the inbox again after releasing, so nothing waits
forever. The reply workers call it (``serve_ready``) for each contact they pop off the ready
list; ``run_contact`` is the RQ job of a wake scheduled for later (a retry's backoff).

Poison never jams a contact: a turn that fails (any exception, the same message
``TURN_MAX_ATTEMPTS`` times) is set aside — the inbound row is marked ``failed`` with the
error, the contact gets one short apology (at most one an hour) and the queue moves on.
Operators see failed messages and can retry them (``retry_failed``).

The database is the inbox, so nothing is lost when a worker dies or Redis blips:
``crm.replies.recovery`` re-wakes contacts whose messages have waited too long.
"""

from __future__ import annotations

import contextlib
import logging
import traceback
from datetime import datetime, timedelta
from typing import NamedTuple

from sqlalchemy import (
    bindparam,
    func,
    select,
    true,
)
from sqlalchemy.orm.exc import StaleDataError

from crm.base import hot_sql, keys, metrics
from crm.base.enums import Direction, MessageStatus, Origin, SessionStatus
from crm.base.extensions import db, get_redis, get_settings
from crm.base.locks import ContactLock, LockLost
from crm.base.models import WAITING, Message, utcnow
from crm.base.outages import is_outage
from crm.replies.delivery import OutboxPass, backoff, get_client, outbound_values, outbox_head
from crm.replies.turns import CONTACT, load_contact, process_inbound
from crm.replies.wake import ALWAYS, IF_WOKEN, NEVER, finish, wake
from integrations.whatsapp import messages as wa
from integrations.whatsapp.simulator import SIMULATOR_CLIENT

log = logging.getLogger(__name__)
# Turns a contact gets each time it is served before it goes to the back of the ready list
# (None: drain the inbox). One keeps latency fair when many contacts write at once: a contact
# that answers instantly cannot hold a worker while others wait.
TURNS_PER_SERVE: int | None = 1
RETRY_AFTER_FAILURE = timedelta(seconds=5)
APOLOGY = "Sorry, something went wrong with your last message. Send 'menu' to start again."

messages = Message.__table__
_SET_ASIDE = (messages.update().where(messages.c.id == bindparam("b_id"), messages.c.processed_at.is_(None))
              .values(status=MessageStatus.FAILED, processed_at=bindparam("b_now"), failed_at=bindparam("b_now"),
                      error_title=bindparam("b_title"), error_details=bindparam("b_details")))

_WAITING = (messages.c.contact_id == bindparam("b_contact"), *WAITING)  # ix_messages_waiting
# The newest waiting message rides along (more is waiting unless it is the head), and the
# newest the user wrote: a burst gets one read receipt, for its last message (Meta marks the
# earlier ones read with it), even when a notice of WhatsApp's own came after it.
_NEWEST = select(func.max(messages.c.id)).where(*_WAITING).scalar_subquery()
_NEWEST_READABLE = select(func.max(messages.c.id)).where(*_WAITING, messages.c.type != "system").scalar_subquery()
_INBOX_COLUMNS = ("id", "payload", "phone_number_id", "wa_message_id", "received_at", "newest", "readable")
_INBOX_HEAD = (select(messages.c.id, messages.c.payload, messages.c.phone_number_id, messages.c.wa_message_id,
                      messages.c.received_at, _NEWEST.label("newest"), _NEWEST_READABLE.label("readable"))
               .where(*_WAITING).order_by(messages.c.id).limit(1).subquery())
_OUTBOX_HEAD = outbox_head(messages.c.id, messages.c.next_attempt_at).subquery()
# The contact with its open session (``turns.load_contact``), its inbox head (in_*) and its
# outbox head (out_*) in one statement: the reply path's first read of a turn. Each head is
# the row of a LIMIT 1 subquery joined on true, so the contact's row comes back alone when
# both boxes are empty. (bench/profile_turn.py: one statement per turn fewer; on PostgreSQL
# each statement is a round trip and the server's work, README Performance.)
_SERVE = (CONTACT.add_columns(*(_INBOX_HEAD.c[name].label(f"in_{name}") for name in _INBOX_COLUMNS),
                               _OUTBOX_HEAD.c.id.label("out_id"),
                               _OUTBOX_HEAD.c.next_attempt_at.label("out_next_attempt_at"))
          .outerjoin(_INBOX_HEAD, true()).outerjoin(_OUTBOX_HEAD, true()))


class Inbox(NamedTuple):
    """The oldest unanswered inbound message of a contact, the id of its newest, and of its
    newest from the user (not a ``system`` notice; None when there is none)."""

    id: int
    payload: dict | None
    phone_number_id: str | None
    wa_message_id: str | None
    received_at: float | None
    newest: int
    readable: int | None


def _split(row) -> tuple[Inbox | None, datetime | None | bool]:
    """(inbox head, outbox head) of a row of ``_SERVE`` (None: no contact): the outbox head is
    False when the outbox is empty, else when it is next due (None: now)."""
    inbox = None if row is None or row.in_id is None else Inbox(*(getattr(row, f"in_{n}") for n in _INBOX_COLUMNS))
    outbox = False if row is None or row.out_id is None else row.out_next_attempt_at
    return inbox, outbox


def serve_state(contact_id: int, alone: bool = False):
    """(contact, inbox head, outbox head) in one round trip: the contact's row with its open
    session (None: no such contact), the oldest unanswered inbound message (``Inbox``, None
    when there is none) and when the oldest unsent outbound row is next due (False: no such
    row; None: due now). ``alone``: the read is a transaction of its own (``hot_sql.execute_alone``:
    committed, on PostgreSQL one round trip); only where the session holds nothing else."""
    row = (hot_sql.execute_alone if alone else hot_sql.execute)(_SERVE, {"b_contact": contact_id}).first()
    return (row, *_split(row))


def has_work(contact_id: int, alone: bool = False) -> bool:
    """Whether a message waits for an answer, or the outbox head may be sent now."""
    _contact, inbox, outbox = serve_state(contact_id, alone)
    return inbox is not None or outbox is None or (outbox is not False and outbox <= utcnow())


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


def _deliver(contact, lock: ContactLock, **kwargs) -> tuple[datetime | None, float | None]:
    """Run an outbox pass: (when the head is next due, None when nothing waits; the reply's ms)."""
    outbox = OutboxPass(contact.id, contact.wa_id, contact.last_inbound_at, lock=lock,
                        opted_out=contact.opted_out, blocked=contact.blocked, user_id=contact.user_id,
                        # the flow simulator's contacts: everything as usual, but sent to a sink
                        client=SIMULATOR_CLIENT if contact.is_test else None, **kwargs)
    due = outbox.run()
    if due is not None:
        wake(contact.id, at=due)
    return due, outbox.reply_ms


class Drained(NamedTuple):
    """What ``drain`` left: ``more`` to do at once (messages were waiting when its last turn
    began, or a message was set aside: its apology waits in the outbox); the outbox was left
    ``settled`` (nothing in it due later, so no wake for later was scheduled); a failed turn
    is ``retrying`` after its backoff (its wake for then is scheduled)."""

    more: bool
    settled: bool
    retrying: bool = False


def drain(contact_id: int, lock: ContactLock, max_turns: int | None = None) -> Drained:
    """Deliver the outbox, then answer waiting messages (at most ``max_turns``), in order."""
    settings = get_settings()
    turns, more, settled = 0, False, True
    while max_turns is None or turns < max_turns:
        contact, inbound, outbox = serve_state(contact_id)
        if contact is None:
            return Drained(False, True)
        outbox_clear = outbox is False
        if not outbox_clear:
            outbox_clear = _deliver(contact, lock)[0] is None
        if inbound is None:
            return Drained(False, outbox_clear)
        more = inbound.newest != inbound.id
        try:
            contact, turn, rows, scene = _turn_with_retry(inbound, contact, claim_first=outbox_clear)
        except LockLost:
            raise
        except Exception as exc:  # poison: count it, set it aside at the limit
            if is_outage(exc):
                raise  # not the message's fault: recovery wakes the contact when things are back
            db.session.rollback()
            if not _turn_failed(contact, inbound, exc, settings.turn_max_attempts):
                return Drained(False, False, retrying=True)  # retried later, after a backoff
            more = True  # set aside: its apology, or the next message, is for the next turn
            turns += 1
            continue
        # webhook -> first accepted send: recorded on that reply's row (its reply_ms)
        due, latency_ms = _deliver(contact, lock, replying_to=inbound.received_at,
                                   claimed=rows[0] if rows else None, then=rows[1:] if rows else None)
        settled = due is None
        if latency_ms is not None:
            metrics.REPLY_LATENCY.observe(latency_ms / 1000)
        session = turn.session if turn else None
        if log.isEnabledFor(logging.DEBUG):  # LOG_LEVEL=DEBUG: one line per turn (README, Operating it)
            log.debug("processed message %s", inbound.id, extra={
                "event": "flow.turn", "contact_id": contact_id, "flow": session.flow if session else None,
                "step": session.step if session else None, "ms": latency_ms})
        if (turn is not None and session.status != SessionStatus.HANDOVER
                and inbound.readable == inbound.id  # the user's newest (never a notice of WhatsApp's)
                and not contact.is_test):  # no read receipts for the flow simulator's contacts
            # Read receipt after the reply: it must never hold the reply back. The typing
            # indicator only makes sense while a reply is still on its way.
            get_client().mark_read(inbound.phone_number_id or settings.whatsapp_phone_number_id,
                                   inbound.wa_message_id, typing=due is not None)
        scene.run_after()
        lock.extend()
        turns += 1
    return Drained(more, settled)


def _turn_failed(contact, inbound, exc: Exception, max_attempts: int) -> bool:
    """Count a failed turn; at ``max_attempts`` set the message aside. True when set aside."""
    redis = get_redis()
    key = keys.turn_failures(inbound.id)
    pipe = redis.pipeline(transaction=False)
    pipe.incr(key)
    pipe.expire(key, keys.TURN_FAILURES_TTL)
    attempts = pipe.execute()[0]
    if attempts < max_attempts:
        metrics.TURNS_FAILED.labels("retry").inc()
        log.warning("turn for message %s failed (attempt %s of %s): %s", inbound.id, attempts, max_attempts,
                    _describe(exc), extra={"event": "flow.turn_failed", "contact_id": contact.id})
        wake(contact.id, at=utcnow() + backoff(attempts, base=1.0))
        return False
    set_aside(contact, inbound, exc)
    return True


def _describe(exc: Exception) -> str:
    return f"{type(exc).__name__}: {str(exc)[:300]}"


def set_aside(contact, inbound, exc: Exception) -> None:
    """Mark a message that cannot be processed as failed, tell the user once an hour, move on."""
    now = utcnow()
    detail = "".join(traceback.format_exception_only(type(exc), exc))[-2000:]
    db.session.execute(_SET_ASIDE, {"b_id": inbound.id, "b_now": now, "b_title": _describe(exc)[:512],
                                    "b_details": detail})
    apologise = not (contact.opted_out or contact.blocked) and get_redis().set(
        keys.apology(contact.id), 1, nx=True, ex=keys.APOLOGY_TTL)
    if apologise:
        db.session.execute(messages.insert(), outbound_values(
            contact.id, inbound.phone_number_id or get_settings().whatsapp_phone_number_id, wa.text(APOLOGY),
            Origin.SYSTEM, None, now))
    db.session.commit()
    metrics.TURNS_FAILED.labels("set_aside").inc()
    log.error("message %s set aside after repeated failures: %s", inbound.id, _describe(exc),
              extra={"event": "flow.message_set_aside", "contact_id": contact.id})


def run_contact(contact_id: int) -> str:
    """The RQ job of a wake at a later time (a retry that is due): serve the contact now."""
    return serve_contact(contact_id)


def serve_ready(contact_id: int, lock: ContactLock | None = None, next_lock: ContactLock | None = None) -> str:
    """Serve a contact the reply worker popped off the ready list (``crm.app.worker``), under
    ``lock`` when the last one's ``finish`` took it already; ``next_lock``: see ``serve_contact``.

    Never raises for the contact's own trouble, so the worker goes on with the next contact:
    a failure is logged, and ``serve_contact`` has already woken the contact again for later.
    """
    try:
        return serve_contact(contact_id, lock, next_lock)
    except Exception:
        log.exception("serving contact %s failed", contact_id,
                      extra={"event": "flow.task_failed", "contact_id": contact_id})
        return "failed"


def serve_contact(contact_id: int, lock: ContactLock | None = None, next_lock: ContactLock | None = None) -> str:
    """One contact's turn under its lock: its outbox, then its oldest waiting message.

    The lock taken (an operator's action, another server): the queued marker is cleared and
    nothing done; the holder looks at the inbox again when it releases. Otherwise, after
    ``TURNS_PER_SERVE`` turns the lock and the marker are released, and a contact with more
    waiting goes to the back of the ready list (``wake``), so every contact gets its turn.

    ``lock``: the contact's lock, already taken (by the last contact's ``finish``).
    ``next_lock``: the round trip that frees this contact also takes the next one off the ready
    list under that lock (``finish``), for the caller to serve next.
    """
    if lock is None:
        lock = ContactLock(get_redis(), contact_id)
        if not lock.acquire():
            finish(contact_id, None, next_lock=next_lock)  # the holder looks at the inbox when it is done
            return "busy"
    outcome, drained, rewoken, requeue = "done", Drained(True, False), True, NEVER
    try:
        drained = drain(contact_id, lock, max_turns=TURNS_PER_SERVE)
        # Back of the ready list without a look when more messages were waiting as the turn
        # began, or a wake came during a turn that left the outbox settled (a message stored
        # meanwhile, almost always; one this turn answered costs the next server an empty look,
        # and schedules nothing): in the round trip that frees the contact. A failed turn waits
        # for its backoff, and what came meanwhile waits behind it: the retry's job serves them in
        # order. bench/profile_turn.py, bench/cpu_split.sh.
        if not drained.retrying:
            requeue = ALWAYS if drained.more else IF_WOKEN if drained.settled else NEVER
    except LockLost as exc:
        log.warning("serving the contact stopped: %s", exc, extra={"event": "flow.lock_lost", "contact_id": contact_id})
        outcome = "lock lost"
    except Exception:
        outcome = "failed"
        raise
    finally:
        try:
            db.session.rollback()
        finally:  # even with the database away: free the contact at once (else the TTLs do)
            rewoken = finish(contact_id, lock.token, requeue, next_lock)
            if outcome == "failed":  # an outage or a bug of ours: try again soon (recovery also would)
                with contextlib.suppress(Exception):
                    wake(contact_id, at=utcnow() + RETRY_AFTER_FAILURE)
    if requeue == ALWAYS or (requeue == IF_WOKEN and rewoken):
        return "requeued"
    if outcome == "done" and drained.retrying:
        return outcome
    # With a send waiting for its retry, or after a lost lock, a wake meanwhile requeues only
    # when the inbox or the outbox holds something due now: a read of its own (on PostgreSQL one
    # round trip, not BEGIN, SELECT and ROLLBACK).
    if rewoken or outcome != "done":
        try:
            requeue_now = has_work(contact_id, alone=True)
        except Exception:  # the database went away: look again soon rather than lose the wake
            with contextlib.suppress(Exception):
                wake(contact_id, at=utcnow() + RETRY_AFTER_FAILURE)
            raise
        if requeue_now:
            wake(contact_id)
            return "requeued"
    return outcome


def retry_failed(message_id: int) -> bool:
    """Put a set-aside inbound message back at its place in the contact's inbox (an operator's retry)."""
    row = db.session.execute(select(messages.c.contact_id).where(
        messages.c.id == message_id, messages.c.direction == Direction.IN,
        messages.c.status == MessageStatus.FAILED)).first()
    if row is None:
        return False
    db.session.execute(messages.update().where(messages.c.id == message_id).values(
        status=MessageStatus.RECEIVED, processed_at=None, failed_at=None, error_title=None, error_details=None))
    db.session.commit()
    get_redis().delete(keys.turn_failures(message_id))
    wake(row.contact_id)
    return True


