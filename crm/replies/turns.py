"""A turn: run the engine for one inbound message and persist what it produced, in one commit.

The engine returns typed events (``flows.events``); each is persisted by its handler in
``HANDLERS`` (mailroom persists goflow's events the same way). A handler adds to the
``Scene`` — the writes of the turn, gathered before the commit — and may add hooks that run
``after`` the turn's replies went out (the read receipt, metrics, logs).

One transaction holds the session update (optimistic ``version`` check: a concurrent expiry
raises StaleDataError and the turn is redone), the contact changes, the outbound rows and
the processed mark. Its first reply is inserted already claimed for sending when the
outbox was empty, so delivery needs no commit of its own for it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from flask import current_app
from sqlalchemy import bindparam, select
from sqlalchemy.orm.exc import StaleDataError

from crm.base import hot_sql, metrics
from crm.base.enums import OPEN_STATUSES, EndReason, Origin, SessionStatus
from crm.base.extensions import db, get_settings
from crm.base.models import Contact, Message, contact_context, utcnow, window_open
from crm.base.operators import AuditEvent
from crm.replies import sessions as ss
from crm.replies.delivery import Outgoing, claim_new, outbound_values
from flows import engine
from flows import events as ev
from flows.actions import actions_of
from flows.store import library_cache
from integrations.whatsapp.inbound import describe

log = logging.getLogger(__name__)
PATH_MAX = 200  # steps kept in a test contact's session state (the simulator's step path)

messages, contacts = Message.__table__, Contact.__table__
# The contact and its open session (s_* columns, NULL when none) in one statement: a turn
# reads both, and on PostgreSQL each statement is the server's work (README, Performance).
CONTACT = (select(contacts.c.id, contacts.c.wa_id, contacts.c.user_id, contacts.c.profile_name,
                   contacts.c.custom_fields, contacts.c.opted_out, contacts.c.blocked, contacts.c.last_inbound_at,
                   contacts.c.is_test,  # the flow simulator's contacts: delivered to a sink, path kept
                   *(ss.sessions.c[name].label(f"s_{name}") for name in ss.SESSION_COLUMNS))
            .select_from(contacts.outerjoin(ss.sessions, ss.sessions.c.id == ss.OPEN_ID))
            .where(contacts.c.id == bindparam("b_contact")))
_CONTACT_WRITE = (contacts.update().where(contacts.c.id == bindparam("b_id"))
                  .values(custom_fields=bindparam("b_fields"), opted_out=bindparam("b_opted_out")))
_PROCESSED = (messages.update().where(messages.c.id == bindparam("b_id"))
              .values(processed_at=bindparam("b_now"), flow_session_id=bindparam("b_session")))
_OUTBOUND_NEW = messages.insert().returning(messages.c.id)
_AUDIT_NEW = AuditEvent.__table__.insert()


def load_contact(contact_id: int):
    """The contact's row (None: no such contact), with its open session's columns (s_*:
    ``sessions.session_of_contact``)."""
    return hot_sql.execute(CONTACT, {"b_contact": contact_id}).first()


def actions() -> dict:
    """The flow actions registered by the app's packages (name -> callable(params, context))."""
    return actions_of(current_app)


@dataclass
class Scene:
    """What one turn writes, gathered by the event handlers before the commit."""

    contact: object  # the contact row read before the turn
    fields: dict
    opted_out: bool
    contact_changed: bool = False
    started: bool = False
    ends: list[str] = field(default_factory=list)
    origin: Origin = Origin.FLOW  # of the turn's outbound rows
    after: list[Callable[[], None]] = field(default_factory=list)  # after the replies went out
    path: list[list[str]] = field(default_factory=list)  # [flow, step] entered, for test contacts only

    def run_after(self) -> None:
        for hook in self.after:
            hook()


def _field_set(scene: Scene, event: ev.FieldSet) -> None:
    scene.fields[event.name], scene.contact_changed = event.value, True


def _opted_out(scene: Scene, _event: ev.OptedOut) -> None:
    scene.opted_out, scene.contact_changed = True, True
    scene.origin = Origin.CONSENT  # the confirmation is the one message an opted-out contact gets
    contact_id = scene.contact.id
    scene.after.append(lambda: log.info("contact %s opted out", contact_id,
                                        extra={"event": "contact.opted_out", "contact_id": contact_id}))


def _opted_in(scene: Scene, _event: ev.OptedIn) -> None:
    scene.opted_out, scene.contact_changed = False, True
    scene.origin = Origin.CONSENT


def _session_started(scene: Scene, _event: ev.SessionStarted) -> None:
    scene.started = True
    scene.path.clear()  # the steps that follow belong to the new session


def _step_entered(scene: Scene, event: ev.StepEntered) -> None:
    # The flow simulator shows the steps a test contact went through (kept in its session's
    # state, see _write_session); real contacts' sessions keep no path.
    if scene.contact.is_test:
        scene.path.append([event.flow, event.step])


def _session_ended(scene: Scene, event: ev.SessionEnded) -> None:
    scene.ends.append(event.reason)


def _handover(scene: Scene, event: ev.HandoverRequested) -> None:
    contact_id = scene.contact.id
    # a note in the inbox's thread and audit trail, and where the waiting time starts
    db.session.execute(_AUDIT_NEW, {"at": utcnow(), "operator": "bot", "via": "flow", "action": "handover",
                                    "contact_id": contact_id, "target": event.flow, "detail": {"step": event.step}})
    scene.after.append(lambda: (metrics.HANDOVERS.inc(), log.info(
        "contact %s waits for a person", contact_id,
        extra={"event": "handover.requested", "contact_id": contact_id, "flow": event.flow, "step": event.step})))


def _flow_entered(_scene: Scene, _event: ev.FlowEntered) -> None:
    pass  # the session row carries the new flow


def _flow_failed(scene: Scene, event: ev.FlowFailed) -> None:
    log.warning("flow error: %s", event.data, extra={"event": "flow.error", "contact_id": scene.contact.id})


HANDLERS: dict[type[ev.Event], Callable] = {
    ev.FieldSet: _field_set, ev.OptedOut: _opted_out, ev.OptedIn: _opted_in,
    ev.SessionStarted: _session_started, ev.SessionEnded: _session_ended,
    ev.HandoverRequested: _handover, ev.FlowEntered: _flow_entered, ev.FlowFailed: _flow_failed,
    ev.StepEntered: _step_entered,
}


def process_inbound(inbound, contact, claim_first: bool) -> tuple[engine.Turn | None, list[Outgoing] | None, Scene]:
    """Run the engine for one inbound message and commit everything it produced at once.

    With ``claim_first`` (the outbox was empty before the turn) the turn's first message is
    committed already claimed for sending and the turn's rows are returned (the outbox then
    holds exactly them); otherwise None is returned in their place and delivery reads the outbox.
    """
    now = utcnow()
    scene = Scene(contact, dict(contact.custom_fields or {}), contact.opted_out)
    if contact.blocked:
        hot_sql.execute(_PROCESSED, {"b_id": inbound.id, "b_now": now, "b_session": None})
        db.session.commit()
        return None, None, scene
    settings = get_settings()
    library = library_cache.get()
    row = ss.session_of_contact(contact)
    kind, text, reply_id = describe(inbound.payload)
    message = engine.Inbound(type=kind, text=text, reply_id=reply_id, payload=inbound.payload)
    turn = engine.handle(library, ss.session_of(row), message, contact_context(contact),
                         engine.EngineSettings.from_settings(settings), actions())
    session_id, rows, claimed = apply_turn(turn, scene, row, library, inbound.phone_number_id, now,
                                           claim_first=claim_first)
    hot_sql.execute(_PROCESSED, {"b_id": inbound.id, "b_now": now, "b_session": session_id})
    db.session.commit()
    return turn, rows if claimed else None, scene


def apply_turn(turn: engine.Turn, scene: Scene, row, library: engine.Library, phone_number_id: str,
               now: datetime, claim_first: bool = False) -> tuple[int | None, list[Outgoing], bool]:
    """Write a turn's events, session and outbound rows into the open transaction.

    ``scene.contact`` and ``row`` (the open session, or None) are what was read before the
    turn. Returns the session's id, the outbound rows in order, and whether the first was
    inserted already claimed for sending (asked with ``claim_first``, done when the 24-hour
    window is open). Raises StaleDataError when the session changed since it was read.
    """
    contact = scene.contact
    for event in turn.events:
        HANDLERS[type(event)](scene, event)
    if scene.contact_changed:
        hot_sql.execute(_CONTACT_WRITE, {"b_id": contact.id, "b_fields": scene.fields,
                                         "b_opted_out": scene.opted_out})
    session_id = _write_session(turn.session, scene, row, library, now)
    rows: list[Outgoing] = []
    claim_first = claim_first and bool(turn.messages) and window_open(contact.last_inbound_at, now)
    for message in turn.messages:
        values = outbound_values(contact.id, phone_number_id, message, scene.origin, session_id, now)
        if claim_first and not rows:
            claim_new(values, now)
        message_id = hot_sql.execute(_OUTBOUND_NEW, values).scalar_one()
        rows.append(Outgoing(message_id, message["type"], message, phone_number_id, values["callback_id"],
                             values["attempts"], values["next_attempt_at"], scene.origin))
    return session_id, rows, claim_first


def _write_session(new: engine.Session, scene: Scene, row, library: engine.Library, now: datetime) -> int | None:
    ends = list(scene.ends)
    session_id, version = (row.id, row.version) if row is not None else (None, None)
    if scene.started:
        if row is not None:  # the old session ends where the new one starts
            ss.end_session(row, ends.pop(0) if ends else EndReason.RESTARTED, now)
        session_id = hot_sql.execute(ss.SESSION_NEW, {
            "contact_id": scene.contact.id, "flow_name": new.flow, "flow_version": new.flow_version or 1,
            "status": SessionStatus.ACTIVE, "state": {}, "started_at": now, "last_activity_at": now, "version": 1,
        }).scalar_one()
        version = 1
    if session_id is None:
        return None
    state = new.to_state()
    if scene.contact.is_test:  # the simulator's step path: this session's earlier steps, then this turn's
        earlier = [] if scene.started or row is None else list((row.state or {}).get("path") or [])
        state["path"] = (earlier + scene.path)[-PATH_MAX:]
    values = {"b_id": session_id, "b_version": version, "b_flow": new.flow,
              "b_flow_version": new.flow_version or (row.flow_version if row is not None else 1),
              "b_step": new.step, "b_state": state, "b_now": now, "b_status": new.status,
              "b_expires": None, "b_ended": None, "b_reason": None}
    if new.status == SessionStatus.ACTIVE:
        values["b_expires"] = ss.idle_deadline(library, new.flow, now)
    elif new.status not in OPEN_STATUSES:
        values.update(b_status=SessionStatus.ENDED, b_ended=now, b_reason=ends[-1] if ends else EndReason.COMPLETED)
    if hot_sql.execute(ss.SESSION_WRITE, values).rowcount != 1:
        raise StaleDataError(f"flow session {session_id} changed during the turn")
    return session_id


def start_flow_for(contact_id: int, flow_name: str) -> engine.Turn:
    """An operator starts a flow: end the open session, run the flow's first steps, commit.

    The caller holds the contact's lock and wakes the contact afterwards.
    """
    settings, library, now = get_settings(), library_cache.get(), utcnow()
    contact = load_contact(contact_id)
    row = ss.session_of_contact(contact)
    turn = engine.start_flow(library, ss.session_of(row), flow_name, contact_context(contact),
                             engine.EngineSettings.from_settings(settings), actions())
    if row is not None and row.status == SessionStatus.HANDOVER:
        ss.end_session(row, EndReason.REPLACED, now)
        row = None
    scene = Scene(contact, dict(contact.custom_fields or {}), contact.opted_out)
    apply_turn(turn, scene, row, library, settings.whatsapp_phone_number_id, now)
    db.session.commit()
    return turn
