"""What the simulator does with its test contacts: create one per run, say something as it,
press a button, reset, and read back the conversation, the session and the step path.

Everything goes through the runtime's own entry points: ``store_inbound`` (the webhook's
intake, with a message shaped like Meta's), ``serve_contact`` (one contact's task),
``start_flow_for`` (an operator starting a flow) and ``end_session``.
"""

from __future__ import annotations

import time
import uuid

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from crm.app.api import ApiError
from crm.app.api.contacts import contact_lock
from crm.base.enums import OPEN_STATUSES, Direction, EndReason
from crm.base.extensions import db, get_settings
from crm.base.models import Contact, Message, utcnow
from crm.base.operators import Operator
from crm.replies.contact import has_work, serve_contact
from crm.replies.intake import store_inbound
from crm.replies.sessions import end_session, open_session
from crm.replies.turns import start_flow_for
from flows.models import FlowSession
from flows.store import library_cache
from integrations.whatsapp.inbound import parse_webhook

ANSWER_SECONDS = 5.0  # how long a request waits while another process serves the contact
HISTORY = 500  # messages shown
TEXT_MAX = 4096


class SimulatorError(ApiError):
    """Bad input or a state the simulator cannot act on (JSON error, never a 500)."""


def _prefix(operator: Operator) -> str:
    return f"sim-{operator.id}-"


def current_contact(operator: Operator) -> Contact | None:
    """The operator's latest simulator contact (each run has its own)."""
    return db.session.execute(
        select(Contact).where(Contact.is_test.is_(True), Contact.wa_id.like(_prefix(operator) + "%"))
        .order_by(Contact.id.desc()).limit(1)).scalar_one_or_none()


def new_contact(operator: Operator) -> Contact:
    """A fresh test contact for a new run: ``sim-<operator id>-<n>``, "Simulator (<operator>)".

    It counts as having just written (the 24-hour window is open), as a person who opens a chat.
    """
    taken = db.session.execute(select(func.count()).select_from(Contact).where(
        Contact.is_test.is_(True), Contact.wa_id.like(_prefix(operator) + "%"))).scalar_one()
    for n in range(taken + 1, taken + 20):
        now = utcnow()
        contact = Contact(wa_id=f"{_prefix(operator)}{n}", profile_name=f"Simulator ({operator.name})",
                          custom_fields={}, is_test=True, opted_out=False, blocked=False,
                          first_seen_at=now, last_seen_at=now, last_inbound_at=now)
        db.session.add(contact)
        try:
            db.session.commit()
            return contact
        except IntegrityError:  # another tab of the same operator took that number
            db.session.rollback()
    raise SimulatorError(409, "could not create a test contact; try again")


def answer(contact_id: int) -> None:
    """Run the contact's task here until nothing waits (the woken RQ job then finds nothing to do).

    One contact's turn (``serve_contact``), never the queue's: a request serves its own test
    contact, not the real contacts queued behind it. A task another process holds (a worker
    took the wake up first) is waited for.
    """
    deadline = time.monotonic() + ANSWER_SECONDS
    while has_work(contact_id) and time.monotonic() < deadline:
        if serve_contact(contact_id) == "busy":
            time.sleep(0.05)


def _deliver_inbound(contact: Contact, message: dict) -> None:
    """Store ``message`` (a Meta message object) through the webhook's intake, then answer it."""
    pnid = get_settings().whatsapp_phone_number_id or "simulator"
    body = {"object": "whatsapp_business_account", "entry": [{"id": "simulator", "changes": [{
        "field": "messages", "value": {
            "messaging_product": "whatsapp",
            "metadata": {"display_phone_number": "simulator", "phone_number_id": pnid},
            "contacts": [{"profile": {"name": contact.profile_name}, "wa_id": contact.wa_id}],
            "messages": [message]}}]}]}
    contact_id = contact.id
    store_inbound(parse_webhook(body).messages)
    answer(contact_id)


def _message(contact: Contact, kind: str, **fields) -> dict:
    return {"from": contact.wa_id, "id": f"wamid.sim.{uuid.uuid4().hex}", "timestamp": str(int(time.time())),
            "type": kind, **fields}


def say(contact: Contact, text) -> None:
    """The tester types ``text``."""
    if not isinstance(text, str) or not text.strip():
        raise SimulatorError(422, "type a message first")
    if len(text) > TEXT_MAX:
        raise SimulatorError(422, f"a WhatsApp message has at most {TEXT_MAX} characters")
    _deliver_inbound(contact, _message(contact, "text", text={"body": text}))


def options_of(payload: dict) -> dict[str, dict]:
    """The reply buttons or list rows of one of our interactive messages: id -> {type, id, title, description}."""
    interactive = (payload.get("interactive") or {}) if payload.get("type") == "interactive" else {}
    action = interactive.get("action") or {}
    if interactive.get("type") == "button":
        return {b["reply"]["id"]: {"type": "button_reply", "id": b["reply"]["id"], "title": b["reply"]["title"]}
                for b in action.get("buttons") or [] if isinstance(b.get("reply"), dict)}
    if interactive.get("type") == "list":
        return {row["id"]: {"type": "list_reply", "id": row["id"], "title": row.get("title", ""),
                            **({"description": row["description"]} if row.get("description") else {})}
                for section in action.get("sections") or [] for row in section.get("rows") or []}
    return {}


def press(contact: Contact, message_id, reply_id) -> None:
    """The tester presses button (or list row) ``reply_id`` of our message ``message_id``: WhatsApp
    sends its id and title, in reply to (``context``) that message."""
    if not isinstance(message_id, int) or not isinstance(reply_id, str):
        raise SimulatorError(422, "'message_id' (a number) and 'reply_id' (a string) are required")
    row = db.session.execute(select(Message).where(
        Message.id == message_id, Message.contact_id == contact.id, Message.direction == Direction.OUT)
    ).scalar_one_or_none()
    if row is None:
        raise SimulatorError(404, "that message is not in this simulator chat")
    reply = options_of(row.payload or {}).get(reply_id)
    if reply is None:
        raise SimulatorError(422, f"the message has no button or list row {reply_id!r}")
    kind = reply.pop("type")
    fields = {"interactive": {"type": kind, kind: reply}}
    if row.wa_message_id:
        fields["context"] = {"from": "simulator", "id": row.wa_message_id}
    _deliver_inbound(contact, _message(contact, "interactive", **fields))


def flow_choices() -> list[dict]:
    """The active flows, the main menu first."""
    library, main = library_cache.get(), get_settings().main_menu_flow
    names = sorted(library.flows, key=lambda name: (name != main, name))
    return [{"name": name, "description": library.flows[name].description or "", "main": name == main}
            for name in names]


def restart(operator: Operator, flow) -> Contact:
    """End the current run's session and start a fresh test contact; with ``flow``, the bot
    starts that flow at once (as when an operator starts a flow); without, the tester writes first."""
    if flow not in (None, "") and (not isinstance(flow, str) or flow not in library_cache.get().flows):
        raise SimulatorError(422, f"{flow!r} is not an active flow")
    old = current_contact(operator)
    if old is not None:
        with contact_lock(old.id):
            session = open_session(old.id)
            if session is not None:
                end_session(session, EndReason.RESET)
                db.session.commit()
    contact = new_contact(operator)
    if flow:
        contact_id = contact.id
        with contact_lock(contact_id):
            start_flow_for(contact_id, flow)
        answer(contact_id)
        contact = db.session.get(Contact, contact_id)
    return contact


# -- what the page shows ---------------------------------------------------------------------------
def _stamp(value) -> str | None:
    return value.isoformat() + "Z" if value else None


def message_dict(m: Message) -> dict:
    return {"id": m.id, "direction": m.direction, "type": m.type, "payload": m.payload,
            "text": m.text,
            "wa_message_id": m.wa_message_id, "status": m.status, "origin": m.origin, "at": _stamp(m.created_at),
            "error": m.error_title}


def session_dict(s: FlowSession) -> dict:
    state = s.state or {}
    return {"id": s.id, "flow": s.flow_name, "step": s.step_id, "status": s.status,
            "variables": state.get("vars") or {}, "started_at": _stamp(s.started_at),
            "last_activity_at": _stamp(s.last_activity_at), "expires_at": _stamp(s.expires_at),
            "ended_at": _stamp(s.ended_at), "end_reason": s.end_reason,
            "path": [{"flow": f, "step": st} for f, st in state.get("path") or []]}


def state(operator: Operator) -> dict:
    """The current run: the contact, its messages, its sessions (newest last) and the flows."""
    contact = current_contact(operator)
    out: dict = {"now": _stamp(utcnow()), "contact": None, "messages": [], "sessions": [], "session": None,
                 "flows": flow_choices(), "main_menu": get_settings().main_menu_flow}
    if contact is None:
        return out
    contact_id = contact.id
    if has_work(contact_id):  # e.g. an expiry notice: deliver it now, even with no worker running
        answer(contact_id)
        contact = db.session.get(Contact, contact_id)
    rows = db.session.execute(select(Message).where(Message.contact_id == contact_id)
                              .order_by(Message.id.desc()).limit(HISTORY)).scalars().all()
    sessions = db.session.execute(select(FlowSession).where(FlowSession.contact_id == contact_id)
                                  .order_by(FlowSession.id)).scalars().all()
    open_ = [s for s in sessions if s.status in OPEN_STATUSES]
    out.update(
        contact={"id": contact.id, "wa_id": contact.wa_id, "name": contact.profile_name,
                 "fields": contact.custom_fields or {}, "opted_out": contact.opted_out,
                 "blocked": contact.blocked},
        messages=[message_dict(m) for m in reversed(rows)],
        sessions=[session_dict(s) for s in sessions],
        session=session_dict(open_[-1] if open_ else sessions[-1]) if sessions else None,
        run_flow=sessions[0].flow_name if sessions else None)
    return out
