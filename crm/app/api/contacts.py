"""Contacts, their conversation, sends, flow session and human handover."""

from __future__ import annotations

import time

from flask import jsonify, request
from sqlalchemy import exists, or_, select

from crm.app.api import ApiError, arg_bool, arg_int, arg_time, body, bp, stamp
from crm.base import keys
from crm.base.enums import OPEN_STATUSES, EndReason, Origin, SessionStatus
from crm.base.extensions import contains_pattern, db, get_redis, get_settings
from crm.base.locks import ContactLock
from crm.base.models import Contact, Message, utcnow
from crm.base.operators import audit, current_actor
from crm.base.templates import TemplateRefused, require_approved
from crm.replies.contact import has_work
from crm.replies.delivery import queue_outbound
from crm.replies.sessions import end_session, open_session
from crm.replies.turns import start_flow_for
from crm.replies.wake import wake
from flows.models import FlowSession
from flows.store import library_cache
from integrations.whatsapp import messages as wa

OPERATOR_FLOW = "(operator)"  # flow name of a handover an operator started without a flow


def contact_dict(contact: Contact, session: FlowSession | None = None, full: bool = False) -> dict:
    out = {
        "id": contact.id, "wa_id": contact.wa_id, "name": contact.profile_name or "",
        "opted_out": contact.opted_out, "blocked": contact.blocked,
        "last_seen_at": stamp(contact.last_seen_at), "last_inbound_at": stamp(contact.last_inbound_at),
        "handover": session is not None and session.status == SessionStatus.HANDOVER,
        "test": contact.is_test,
    }
    if full:
        out.update(fields=contact.custom_fields or {}, first_seen_at=stamp(contact.first_seen_at),
                   window_open=contact.window_open(), user_id=contact.user_id,
                   session=session.to_dict() if session else None)
    return out


def get_contact(contact_id: int) -> Contact:
    contact = db.session.get(Contact, contact_id)
    if contact is None:
        raise ApiError(404, f"no contact with id {contact_id}")
    return contact


def in_handover():
    return exists().where(FlowSession.contact_id == Contact.id, FlowSession.status == SessionStatus.HANDOVER)


@bp.get("/contacts")
def list_contacts():
    limit = arg_int("limit", 50, 1, 200)
    cursor = arg_int("cursor", 0, 0, 2**62)
    stmt = select(Contact)
    q = (request.args.get("q") or "").strip()
    if q:
        like = contains_pattern(q)
        stmt = stmt.where(or_(Contact.profile_name.ilike(like, escape="\\"), Contact.wa_id.like(like, escape="\\"),
                              Contact.user_id.like(like, escape="\\")))
    for name, column in (("opted_out", Contact.opted_out), ("blocked", Contact.blocked)):
        value = arg_bool(name)
        if value is not None:
            stmt = stmt.where(column.is_(value))
    # the flow simulator's contacts only with ?test=true (and then only they)
    stmt = stmt.where(Contact.is_test.is_(arg_bool("test") is True))
    handover = arg_bool("handover")
    if handover is not None:
        stmt = stmt.where(in_handover() if handover else ~in_handover())
    since = arg_time("seen_since")
    if since is not None:
        stmt = stmt.where(Contact.last_seen_at >= since)
    if cursor:
        stmt = stmt.where(Contact.id < cursor)
    rows = db.session.execute(stmt.order_by(Contact.id.desc()).limit(limit + 1)).scalars().all()
    page = rows[:limit]
    sessions = {s.contact_id: s for s in db.session.execute(select(FlowSession).where(
        FlowSession.contact_id.in_([c.id for c in page]), FlowSession.status.in_(OPEN_STATUSES))).scalars()}
    return jsonify(items=[contact_dict(c, sessions.get(c.id)) for c in page],
                   next_cursor=page[-1].id if len(rows) > limit else None)


@bp.get("/contacts/<int:contact_id>")
def get_contact_detail(contact_id: int):
    contact = get_contact(contact_id)
    return jsonify(contact_dict(contact, open_session(contact.id), full=True))


@bp.patch("/contacts/<int:contact_id>")
def update_contact(contact_id: int):
    contact, data = get_contact(contact_id), body()
    update_contact_fields(contact, data)
    db.session.commit()
    return jsonify(contact_dict(contact, open_session(contact.id), full=True))


def update_contact_fields(contact: Contact, data: dict) -> None:
    """Apply ``{"name"?, "fields"?}`` (a null field value removes the field) and audit it; the caller commits."""
    unknown = set(data) - {"name", "fields"}
    if unknown:
        raise ApiError(422, f"unknown field(s): {', '.join(sorted(unknown))}; allowed: name, fields")
    changes: dict = {}
    if "name" in data:
        if not isinstance(data["name"], str) or len(data["name"]) > 256:
            raise ApiError(422, "'name' must be a string of at most 256 characters")
        if data["name"] != (contact.profile_name or ""):
            changes["name"] = data["name"]
        contact.profile_name = data["name"]
    if "fields" in data:
        fields = data["fields"]
        if not isinstance(fields, dict) or not all(isinstance(k, str) and k for k in fields):
            raise ApiError(422, "'fields' must be an object; a null value removes a field")
        merged = dict(contact.custom_fields or {})
        for key, value in fields.items():
            if value is None:
                if key in merged:
                    changes.setdefault("fields", {})[key] = None
                merged.pop(key, None)
            elif isinstance(value, (str, int, float, bool)):
                if merged.get(key) != value:
                    changes.setdefault("fields", {})[key] = value
                merged[key] = value
            else:
                raise ApiError(422, f"field {key!r} must be a string, number, boolean or null")
        contact.custom_fields = merged
    if changes:
        audit("fields", contact.id, detail=changes)


def set_blocked(contact: Contact, blocked: bool) -> None:
    if contact.blocked != blocked:
        contact.blocked = blocked
        audit("block" if blocked else "unblock", contact.id)
    db.session.commit()


def _set_blocked(contact_id: int, blocked: bool):
    contact = get_contact(contact_id)
    set_blocked(contact, blocked)
    return jsonify(contact_dict(contact, open_session(contact.id), full=True))


@bp.post("/contacts/<int:contact_id>/block")
def block_contact(contact_id: int):
    return _set_blocked(contact_id, True)


@bp.post("/contacts/<int:contact_id>/unblock")
def unblock_contact(contact_id: int):
    return _set_blocked(contact_id, False)


# -- conversation -------------------------------------------------------------------------------
@bp.get("/contacts/<int:contact_id>/messages")
def list_messages(contact_id: int):
    get_contact(contact_id)
    limit = arg_int("limit", 50, 1, 200)
    cursor = arg_int("cursor", 0, 0, 2**62)
    stmt = select(Message).where(Message.contact_id == contact_id)
    if cursor:
        stmt = stmt.where(Message.id < cursor)
    rows = db.session.execute(stmt.order_by(Message.id.desc()).limit(limit + 1)).scalars().all()
    page = rows[:limit]
    return jsonify(items=[{**m.to_dict(), "origin": m.origin} for m in page],
                   next_cursor=page[-1].id if len(rows) > limit else None)


def build_message(data: dict) -> dict:
    """An operator's message as a Graph API message object, checked against WhatsApp's limits."""
    kind = data.get("type")
    try:
        if kind == "text":
            if not isinstance(data.get("text"), str) or not data["text"].strip():
                raise ApiError(422, "'text' is required for a text message")
            return wa.text(data["text"], bool(data.get("preview_url")))
        if kind == "template":
            return _template(data)
        if kind in {"image", "audio", "video", "document", "sticker"}:
            return wa.media(kind, id=data.get("media_id"), link=data.get("link"), caption=data.get("caption"),
                            filename=data.get("filename"))
        if kind == "buttons":
            buttons = data.get("buttons") or []
            return wa.buttons(data.get("text") or "", [(b.get("id"), b.get("title")) for b in buttons],
                              data.get("header"), data.get("footer"))
        if kind == "list":
            return wa.list_message(data.get("text") or "", data.get("button") or "Options",
                                   data.get("sections") or [], data.get("header"), data.get("footer"))
    except wa.MessageLimitError as exc:
        raise ApiError(422, str(exc)) from None
    except (TypeError, AttributeError, KeyError) as exc:
        raise ApiError(422, f"malformed {kind} message: {exc}") from None
    raise ApiError(422, "'type' must be one of text, template, image, audio, video, document, sticker, "
                        "buttons, list")


def _template(data: dict) -> dict:
    """Only an approved template, with the parameters it expects (crm.base.templates)."""
    if not isinstance(data.get("name"), str) or not data["name"]:
        raise ApiError(422, "'name' is required for a template message")
    language, components = data.get("language") or None, data.get("components")
    if language is not None and not isinstance(language, str):
        raise ApiError(422, "'language' must be a language code such as en_US")
    try:
        template = require_approved(data["name"], language, components)
    except TemplateRefused as exc:
        raise ApiError(422, str(exc)) from None
    return wa.template(template.name, template.language, components)


@bp.post("/contacts/<int:contact_id>/messages")
def send_message(contact_id: int):
    row = send_to_contact(get_contact(contact_id), body())
    return jsonify({**row.to_dict(), "origin": row.origin}), 202


def send_to_contact(contact: Contact, data: dict) -> Message:
    """Queue an operator's message on the contact's ordered outbox, audit it, commit, wake delivery."""
    message = build_message(data)
    if contact.blocked:
        raise ApiError(409, "the contact is blocked; unblock it first")
    if contact.opted_out:
        raise ApiError(409, "the contact opted out: nothing may be sent until they send 'start'")
    if message["type"] != "template" and not contact.window_open():
        raise ApiError(409, "the contact last wrote more than 24 hours ago: only a template message can be sent")
    session = open_session(contact.id)
    holder = held_by_other(session)
    if holder:
        raise ApiError(409, f"{holder} holds this conversation")
    row = queue_outbound(contact, get_settings().whatsapp_phone_number_id, message, Origin.OPERATOR,
                         session.id if session else None)
    if session is not None and session.status == SessionStatus.HANDOVER:
        session.last_activity_at = utcnow()  # an answered handover is not idle
    db.session.flush()
    detail = {"message_id": row.id, "type": message["type"]}
    if message["type"] == "template":
        detail["template"] = message["template"]["name"]
    audit("send", contact.id, detail=detail)
    db.session.commit()
    wake(contact.id)
    return row


def held_by_other(session: FlowSession | None) -> str | None:
    """The other operator holding this conversation (a claimed handover), if any."""
    if session is not None and session.status == SessionStatus.HANDOVER and session.handover_claimed_by not in (
            None, current_actor().name):
        return session.handover_claimed_by
    return None


# -- flow session -------------------------------------------------------------------------------
@bp.get("/contacts/<int:contact_id>/session")
def get_session(contact_id: int):
    get_contact(contact_id)
    session = open_session(contact_id)
    return jsonify(session=session.to_dict() if session else None)


@bp.delete("/contacts/<int:contact_id>/session")
def reset_session(contact_id: int):
    get_contact(contact_id)
    return jsonify(session=reset_contact_session(contact_id).to_dict())


def reset_contact_session(contact_id: int) -> FlowSession:
    """End the contact's open flow session (the bot starts afresh at the next message)."""
    with contact_lock(contact_id):
        session = open_session(contact_id)
        if session is None:
            raise ApiError(404, "the contact has no open flow session")
        end_session(session, EndReason.RESET)
        audit("reset", contact_id, target=session.flow_name, detail={"step": session.step_id})
        db.session.commit()
    return session


@bp.post("/contacts/<int:contact_id>/session")
def start_session(contact_id: int):
    contact, data = get_contact(contact_id), body()
    session, turn = start_contact_flow(contact, data.get("flow"))
    return jsonify(session=session.to_dict() if session else None, messages=len(turn.messages)), 201


def start_contact_flow(contact: Contact, name) -> tuple[FlowSession | None, object]:
    """Start an active flow for the contact now (inside the 24-hour window); returns (session, turn)."""
    if not isinstance(name, str) or name not in library_cache.get().flows:
        raise ApiError(422, f"'flow' must name an active flow; got {name!r}")
    if contact.blocked or contact.opted_out:
        raise ApiError(409, "the contact is blocked or opted out")
    if not contact.window_open():
        raise ApiError(409, "the contact last wrote more than 24 hours ago: a flow can only start inside the "
                            "24-hour window (send a template instead)")
    contact_id = contact.id
    with contact_lock(contact_id):  # delivery is enqueued when the lock is released
        audit("start_flow", contact_id, target=name)  # commits with the turn
        turn = start_flow_for(contact_id, name)
    return open_session(contact_id), turn


class contact_lock:  # a context manager, named like one
    """Hold the contact's flow lock so an operator change never interleaves with a flow turn."""

    def __init__(self, contact_id: int, wait: float = 3.0):
        self.contact_id, self.wait = contact_id, wait
        self.lock = ContactLock(get_redis(), contact_id, ttl_ms=keys.OPERATOR_LOCK_TTL_MS)

    def __enter__(self):
        deadline = time.monotonic() + self.wait
        while not self.lock.acquire():
            if time.monotonic() > deadline:
                raise ApiError(409, "the contact's messages are being processed; try again")
            time.sleep(0.02)
        return self

    def __exit__(self, *_exc):
        db.session.rollback()
        self.lock.release()
        # A server that found the contact busy returned at once: pick up what waited.
        if has_work(self.contact_id):
            wake(self.contact_id)


# -- handover -----------------------------------------------------------------------------------
@bp.get("/handovers")
def list_handovers():
    claimed = arg_bool("claimed")
    stmt = select(FlowSession, Contact).join(Contact, Contact.id == FlowSession.contact_id).where(
        FlowSession.status == SessionStatus.HANDOVER, Contact.is_test.is_(False))  # simulator: nobody waits
    if claimed is not None:
        stmt = stmt.where(FlowSession.handover_claimed_by.is_not(None) if claimed
                          else FlowSession.handover_claimed_by.is_(None))
    rows = db.session.execute(stmt.order_by(FlowSession.last_activity_at)).all()
    return jsonify(items=[{"contact": contact_dict(c, s), "session": s.to_dict(), "claimed_by": s.handover_claimed_by,
                           "waiting_since": stamp(s.last_activity_at)} for s, c in rows])


@bp.post("/contacts/<int:contact_id>/handover")
def claim_handover(contact_id: int):
    """Claim the contact's handover; with no open handover, take the conversation over from the bot."""
    get_contact(contact_id)
    session = claim_conversation(contact_id)
    return jsonify(session=session.to_dict(), claimed_by=session.handover_claimed_by)


def claim_conversation(contact_id: int, force: bool = False) -> FlowSession:
    """Hold the conversation: claim a waiting handover, or take it over from the bot; with ``force``
    (admins), from another operator."""
    me = current_actor().name
    with contact_lock(contact_id):
        now, session = utcnow(), open_session(contact_id)
        detail = None
        if session is not None and session.status == SessionStatus.HANDOVER:
            holder = session.handover_claimed_by
            if holder == me:
                return session
            if holder is not None and not force:
                raise ApiError(409, f"already claimed by {holder}")
            action, detail = ("takeover", {"from": holder}) if holder else ("claim", None)
        else:
            if session is not None:
                end_session(session, EndReason.TAKEN_OVER, now)
                detail = {"from_flow": session.flow_name}
            session = FlowSession(contact_id=contact_id, flow_name=OPERATOR_FLOW, flow_version=1,
                                  status=SessionStatus.HANDOVER,
                                  state={}, started_at=now, last_activity_at=now)
            db.session.add(session)
            action = "takeover"
        session.handover_claimed_by = me
        audit(action, contact_id, detail=detail)
        db.session.commit()
        return session


@bp.post("/contacts/<int:contact_id>/handover/resolve")
def resolve_handover(contact_id: int):
    """End the handover; the bot answers the contact's next message again."""
    get_contact(contact_id)
    return jsonify(session=resolve_conversation(contact_id, body_force()).to_dict())


def resolve_conversation(contact_id: int, force: bool = False) -> FlowSession:
    me = current_actor().name
    with contact_lock(contact_id):
        session = open_session(contact_id)
        if session is None or session.status != SessionStatus.HANDOVER:
            raise ApiError(409, "the contact is not waiting for or talking to a human")
        holder = session.handover_claimed_by
        if holder not in (None, me) and not force:
            raise ApiError(409, f"claimed by {holder}; pass {{\"force\": true}} to resolve")
        end_session(session, EndReason.RESOLVED)
        audit("resolve", contact_id, detail={"held_by": holder} if holder != me else None)
        db.session.commit()
        return session


def body_force() -> bool:
    data = request.get_json(silent=True)
    return isinstance(data, dict) and data.get("force") is True
