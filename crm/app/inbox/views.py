"""Inbox pages and forms. Every action goes through the operator API's own functions
(``crm.api.contacts`` / ``crm.api.flows``): one send path, one claim rule, one audit trail.

A form with bad input gets its page back with the message and the values typed (never a
500); a refused action (409) says why, e.g. who holds the conversation.
"""

from __future__ import annotations

import hashlib
import re
from datetime import datetime
from urllib.parse import urlencode

from flask import abort, flash, g, jsonify, redirect, render_template, request, url_for
from flask_wtf.csrf import CSRFError
from sqlalchemy import func, select
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from crm.app.api import ApiError
from crm.app.api.contacts import (
    claim_conversation,
    reset_contact_session,
    resolve_conversation,
    send_to_contact,
    set_blocked,
    start_contact_flow,
    update_contact_fields,
)
from crm.app.api.flows import MAX_FLOW_BYTES, flow_dict, get_flow, set_flow_active, upload_flow_source
from crm.app.auth import admin_only, page_headers, require_operator
from crm.app.inbox import bp, queries
from crm.app.inbox.message_templates import TemplateInputError, approved_templates, find_template
from crm.app.inbox.render import ago, clock, iso, message_view, ticks, when
from crm.base.extensions import db
from crm.base.models import SERVICE_WINDOW, Contact, utcnow
from crm.base.operators import AccountError, AuditEvent, Operator, OperatorToken, audit, check_password, issue_token
from crm.replies.sessions import open_session
from flows.models import Flow

FIELD_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
FIELD_VALUE_MAX = 1024

bp.before_request(require_operator)
bp.after_request(page_headers)


@bp.app_template_global()
def page_args(**changes) -> dict:
    """The list's filter, search and length, carried from page to page."""
    args = {"filter": g.get("flt", "all"), "q": g.get("q") or None, "limit": g.get("limit")}
    args.update(changes)
    return {k: v for k, v in args.items() if v not in (None, "", "all", queries.PAGE)}


@bp.app_template_global()
def conversation_link() -> tuple[str, str]:
    """(path before the contact id, query after it) of a conversation link, built once per list."""
    query = urlencode(page_args())
    return url_for("inbox.index") + "c/", f"?{query}" if query else ""


bp.add_app_template_global({"flow": "bot", "consent": "bot", "expiry": "expiry notice", "football": "football",
                            "system": "system"}, "ORIGINS")
bp.add_app_template_filter(ago, "ago")
bp.add_app_template_filter(clock, "clock")
bp.add_app_template_filter(iso, "iso")
bp.add_app_template_global(message_view, "message_view")
bp.add_app_template_global(ticks, "ticks")
bp.add_app_template_global(when, "time_of")


# -- errors: a message on the page, never a 500 --------------------------------------------------
def fail(message: str, status: int = 422, details: list | None = None):
    db.session.rollback()
    contact_id = (request.view_args or {}).get("contact_id")
    if request.endpoint == "inbox.poll":
        return jsonify(error=message), status
    if contact_id is not None and db.session.get(Contact, contact_id) is not None:
        return render_conversation(contact_id, error=message, details=details, status=status)
    if request.endpoint and request.endpoint.startswith("inbox.flow"):
        return render_flows(error=message, details=details, status=status)
    return render_template("inbox/message.html", title="That did not work", message=message,
                           details=details), status


@bp.errorhandler(ApiError)
def api_error(exc: ApiError):
    details = exc.details if isinstance(exc.details, list) else None
    return fail(exc.message[:1].upper() + exc.message[1:], exc.status if 400 <= exc.status < 500 else 400, details)


@bp.errorhandler(TemplateInputError)
@bp.errorhandler(AccountError)
def input_error(exc: ValueError):
    message = str(exc)
    return fail(message[:1].upper() + message[1:])


@bp.errorhandler(CSRFError)
def csrf_error(exc: CSRFError):
    return fail(f"The form could not be accepted ({exc.description}). Reload the page and try again.", 400)


@bp.errorhandler(RequestEntityTooLarge)
def too_large(_exc):
    return fail(f"That upload is too large (a flow may be at most {MAX_FLOW_BYTES // 1024} KiB).", 413)


@bp.errorhandler(HTTPException)
def http_error(exc: HTTPException):
    return render_template("inbox/message.html", title=exc.name, message=exc.description), exc.code


# -- the list and a conversation -----------------------------------------------------------------
def list_args() -> tuple[str, str, int]:
    flt = request.args.get("filter", "all")
    g.flt = flt if flt in queries.FILTERS else "all"
    g.q = (request.args.get("q") or "").strip()[:100]
    limit = request.args.get("limit", type=int) or queries.PAGE
    g.limit = max(queries.PAGE, min(queries.PAGE_MAX, limit))
    return g.flt, g.q, g.limit


def list_context(current_id: int | None = None) -> dict:
    flt, q, limit = list_args()
    items, more = queries.conversations(g.me, q, flt, limit)
    return {"items": items, "more": more, "flt": flt, "q": q, "limit": limit, "filters": queries.FILTERS,
            "current_id": current_id, "now": utcnow()}


@bp.get("/")
def index():
    return render_template("inbox/inbox.html", contact=None, **list_context())


def state_key(contact: Contact, session) -> str:
    """Changes when the reply box or the contact panel would look different."""
    parts = (contact.profile_name, contact.opted_out, contact.blocked, contact.window_open(),
             sorted((contact.custom_fields or {}).items()), session and session.id, session and session.status,
             session and session.handover_claimed_by, session and session.step_id,
             session and sorted(((session.state or {}).get("vars") or {}).items()))
    return hashlib.sha1(repr(parts).encode()).hexdigest()[:16]


def panel_context(contact: Contact) -> dict:
    """What the reply box and the contact panel show."""
    session = open_session(contact.id)
    window_open = contact.window_open()
    me = g.me.name
    if contact.blocked:
        hold = "blocked"
    elif session is not None and session.status == "handover":
        hold = "mine" if session.handover_claimed_by == me else "other" if session.handover_claimed_by else "waiting"
    else:
        hold = "bot"
    flows = db.session.execute(select(Flow.name).where(Flow.active.is_(True)).order_by(Flow.name)).scalars().all()
    history = db.session.execute(select(AuditEvent).where(AuditEvent.contact_id == contact.id)
                                 .order_by(AuditEvent.id.desc()).limit(20)).scalars().all()
    return {
        "contact": contact, "session": session, "hold": hold, "window_open": window_open,
        "window_until": contact.last_inbound_at + SERVICE_WINDOW if contact.last_inbound_at else None,
        "templates": approved_templates() if hold == "mine" and not window_open else [],
        "flows": flows, "history": history, "state": state_key(contact, session),
        "variables": ((session.state or {}).get("vars") or {}) if session else {},
        "form": posted_form(),
    }


def posted_form():
    """The submitted form, to show the page again with what was typed ({} if it cannot be read)."""
    if request.method != "POST":
        return {}
    try:
        return request.form
    except RequestEntityTooLarge:
        return {}


def render_conversation(contact_id: int, error: str | None = None, details: list | None = None, status: int = 200):
    contact = db.session.get(Contact, contact_id)
    if contact is None:
        abort(404, f"There is no contact with id {contact_id}.")
    before = request.args.get("before", type=int)
    rows, more_before = queries.thread_messages(contact_id, before=before)
    since = rows[0].created_at if rows and (more_before or before) else None
    notes = queries.notes_since(contact_id, since)
    if before and rows:
        notes = [n for n in notes if n.at <= rows[-1].created_at]
    last_id = rows[-1].id if rows else 0
    if not before:
        queries.mark_read(g.me, contact_id, last_id)
    context = list_context(current_id=contact_id)  # after mark_read: this one shows as read
    return render_template(
        "inbox/inbox.html", items_thread=queries.merge(rows, notes), senders=queries.senders(contact_id, since),
        more_before=more_before, first_id=rows[0].id if rows else None, last_id=last_id, before=before,
        error=error, details=details, poll_time=iso(utcnow()), **panel_context(contact), **context), status


@bp.get("/c/<int:contact_id>")
def conversation(contact_id: int):
    return render_conversation(contact_id)


@bp.get("/poll")
def poll():
    """The list, the waiting contacts, and what is new in the open thread since the page last asked."""
    context = list_context(current_id=request.args.get("c", type=int))
    out = {"list": render_template("inbox/_list.html", **context), "waiting": queries.waiting_ids(),
           "now": iso(utcnow())}
    contact = db.session.get(Contact, context["current_id"]) if context["current_id"] else None
    if contact is not None:
        after = max(0, request.args.get("after", type=int) or 0)
        rows, _ = queries.thread_messages(contact.id, after=after, limit=200)
        since = _parse_time(request.args.get("t"))
        notes = queries.notes_since(contact.id, since - queries.NOTE_OVERLAP) if since else []
        last_id = rows[-1].id if rows else after
        thread = {"after": last_id, "ticks": {}}
        if rows or notes:
            thread["html"] = render_template("inbox/_items.html", items_thread=queries.merge(rows, notes),
                                             senders=queries.senders(contact.id, rows[0].created_at if rows
                                                                     else None))
        for row in queries.outbound_statuses(contact.id, limit=30):
            thread["ticks"][row.id] = str(ticks(row))
        panel = panel_context(contact)
        thread["state"] = panel["state"]
        if panel["state"] != request.args.get("state"):
            thread["reply"] = render_template("inbox/_reply.html", **panel)
            thread["contact"] = render_template("inbox/_contact.html", **panel)
        if rows:
            queries.mark_read(g.me, contact.id, last_id)
        out["thread"] = thread
    return jsonify(out)


def _parse_time(raw: str | None) -> datetime | None:
    try:
        return datetime.fromisoformat(raw.rstrip("Z")) if raw else None
    except ValueError:
        return None


# -- conversation actions --------------------------------------------------------------------------
def back(contact_id: int, message: str | None = None):
    if message:
        flash(message)
    return redirect(url_for("inbox.conversation", contact_id=contact_id, **page_args_from(request.args)), 303)


def page_args_from(args) -> dict:
    return {k: args[k] for k in ("filter", "q", "limit") if args.get(k)}


def get_contact(contact_id: int) -> Contact:
    contact = db.session.get(Contact, contact_id)
    if contact is None:
        abort(404, f"There is no contact with id {contact_id}.")
    return contact


def require_hold(contact: Contact) -> None:
    session = open_session(contact.id)
    if session is None or session.status != "handover" or session.handover_claimed_by != g.me.name:
        holder = session.handover_claimed_by if session is not None and session.status == "handover" else None
        raise ApiError(409, f"{holder} holds this conversation" if holder else
                       "Claim the conversation (or take it over) before answering")


@bp.post("/c/<int:contact_id>/claim")
def claim(contact_id: int):
    get_contact(contact_id)
    force = request.form.get("force") == "1"
    if force and not g.me.is_admin:
        raise ApiError(403, "only an admin may take a conversation over from another operator")
    claim_conversation(contact_id, force=force)
    return back(contact_id, "You hold this conversation now: the bot stays silent until you resolve it.")


@bp.post("/c/<int:contact_id>/resolve")
def resolve(contact_id: int):
    get_contact(contact_id)
    force = request.form.get("force") == "1"
    if force and not g.me.is_admin:
        raise ApiError(403, "only an admin may resolve another operator's conversation")
    resolve_conversation(contact_id, force=force)
    return back(contact_id, "Resolved: the bot answers this contact's next message.")


@bp.post("/c/<int:contact_id>/send")
def send(contact_id: int):
    contact = get_contact(contact_id)
    require_hold(contact)
    text = request.form.get("text") or ""
    if not text.strip():
        raise ApiError(422, "Type a message first")
    send_to_contact(contact, {"type": "text", "text": text})
    return back(contact_id)


@bp.post("/c/<int:contact_id>/template")
def send_template(contact_id: int):
    contact = get_contact(contact_id)
    require_hold(contact)
    template = find_template(request.form.get("template") or "")
    components = template.components_for({p.key: request.form.get(f"param-{template.key}-{p.key}")
                                          for p in template.params})
    send_to_contact(contact, {"type": "template", "name": template.name, "language": template.language,
                              "components": components})
    return back(contact_id, f"Template {template.name} queued.")


def _coerce(key: str, raw: str, old):
    """A typed value keeps its type: numbers stay numbers, true/false stay booleans."""
    raw = raw.strip()
    if len(raw) > FIELD_VALUE_MAX:
        raise ApiError(422, f"field {key!r}: at most {FIELD_VALUE_MAX} characters")
    if isinstance(old, bool):
        if raw.lower() not in ("true", "false"):
            raise ApiError(422, f"field {key!r} is true or false")
        return raw.lower() == "true"
    if isinstance(old, (int, float)):
        try:
            return int(raw) if isinstance(old, int) and re.fullmatch(r"-?\d+", raw) else float(raw)
        except ValueError:
            raise ApiError(422, f"field {key!r} is a number; {raw!r} is not") from None
    return raw


@bp.post("/c/<int:contact_id>/fields")
def edit_fields(contact_id: int):
    contact = get_contact(contact_id)
    form = request.form
    current = dict(contact.custom_fields or {})
    fields: dict = {}
    keys, values = form.getlist("field_key"), form.getlist("field_value")
    if len(keys) != len(values):
        raise ApiError(400, "the form was incomplete; reload the page")
    for key, raw in zip(keys, values, strict=True):
        if key not in current:
            continue  # removed meanwhile
        fields[key] = None if raw.strip() == "" else _coerce(key, raw, current[key])
    new_key, new_value = (form.get("new_key") or "").strip(), form.get("new_value") or ""
    if new_key or new_value.strip():
        if not FIELD_KEY.match(new_key):
            raise ApiError(422, "a new field needs a name of letters, digits and underscores (not starting with "
                                "a digit, at most 64)")
        if not new_value.strip():
            raise ApiError(422, f"give the new field {new_key!r} a value")
        fields[new_key] = _coerce(new_key, new_value, current.get(new_key))
    data = {"fields": fields}
    name = form.get("name")
    if name is not None:
        data["name"] = name.strip()
    update_contact_fields(contact, data)
    db.session.commit()
    return back(contact_id, "Contact saved.")


@bp.post("/c/<int:contact_id>/block")
def block(contact_id: int):
    set_blocked(get_contact(contact_id), True)
    return back(contact_id, "Blocked: the bot ignores this contact and nobody can write to it.")


@bp.post("/c/<int:contact_id>/unblock")
def unblock(contact_id: int):
    set_blocked(get_contact(contact_id), False)
    return back(contact_id, "Unblocked.")


@bp.post("/c/<int:contact_id>/session/reset")
def reset_session(contact_id: int):
    get_contact(contact_id)
    reset_contact_session(contact_id)
    return back(contact_id, "Flow session reset: the bot starts afresh at the next message.")


@bp.post("/c/<int:contact_id>/session/start")
def start_flow(contact_id: int):
    contact = get_contact(contact_id)
    name = request.form.get("flow") or ""
    start_contact_flow(contact, name)
    return back(contact_id, f"Flow {name} started.")


# -- flows ---------------------------------------------------------------------------------------
def render_flows(error: str | None = None, details: list | None = None, status: int = 200, uploaded=None):
    rows = db.session.execute(select(Flow).order_by(Flow.name)).scalars().all()
    return render_template("inbox/flows.html", flows=[flow_dict(f) for f in rows], error=error, details=details,
                           form=posted_form(), uploaded=uploaded,
                           max_kib=MAX_FLOW_BYTES // 1024), status


@bp.get("/flows")
def flows():
    return render_flows()


@bp.get("/flows/<name>")
def flow_detail(name: str):
    flow = get_flow(name)
    return render_template("inbox/flow.html", flow=flow_dict(flow, full=True))


@bp.post("/flows")
@admin_only
def flow_upload():
    upload = request.files.get("file")
    if upload is not None and upload.filename:
        raw, filename = upload.read(MAX_FLOW_BYTES + 1), upload.filename
    else:
        raw, filename = (request.form.get("source") or "").encode(), request.form.get("filename") or "upload"
    name, version, outcome, warnings = upload_flow_source(raw, filename[:200])
    flash(f"Flow {name}: {outcome} (version {version}).")
    for warning in warnings:  # e.g. a template the store does not know as approved
        flash(f"Warning: {warning}")
    return redirect(url_for("inbox.flows"), 303)


@bp.post("/flows/<name>/activate")
@admin_only
def flow_activate(name: str):
    set_flow_active(name, True)
    flash(f"Flow {name} is active.")
    return redirect(url_for("inbox.flows"), 303)


@bp.post("/flows/<name>/deactivate")
@admin_only
def flow_deactivate(name: str):
    set_flow_active(name, False)
    flash(f"Flow {name} is inactive.")
    return redirect(url_for("inbox.flows"), 303)


# -- audit, account, operators -------------------------------------------------------------------
@bp.get("/audit")
def audit_log():
    operator = (request.args.get("operator") or "").strip()[:64] or None
    action = (request.args.get("action") or "").strip()[:32] or None
    contact_id = request.args.get("contact", type=int)
    before = request.args.get("before", type=int)
    rows, more = queries.audit_page(operator, action, contact_id, before)
    names = dict(db.session.execute(select(Contact.id, func.coalesce(Contact.profile_name, Contact.wa_id)).where(
        Contact.id.in_({r.contact_id for r in rows if r.contact_id}))).all())
    actions = db.session.execute(select(AuditEvent.action).distinct().order_by(AuditEvent.action)).scalars().all()
    operators = db.session.execute(select(AuditEvent.operator).distinct().order_by(AuditEvent.operator)
                                   ).scalars().all()
    return render_template("inbox/audit.html", rows=rows, more=more, names=names, actions=actions,
                           operators=operators, operator=operator, action=action, contact_id=contact_id)


def render_account(new_token: str | None = None, error: str | None = None, status: int = 200):
    tokens = db.session.execute(select(OperatorToken).where(OperatorToken.operator_id == g.me.id)
                                .order_by(OperatorToken.id.desc())).scalars().all()
    return render_template("inbox/account.html", tokens=tokens, new_token=new_token, error=error), status


@bp.get("/account")
def account():
    return render_account()


@bp.post("/account/tokens")
def token_create():
    row, token = issue_token(g.me, request.form.get("label") or "")
    audit("token_create", target=row.label)
    db.session.commit()
    return render_account(new_token=token, status=201)


@bp.post("/account/tokens/<int:token_id>/revoke")
def token_revoke(token_id: int):
    row = db.session.get(OperatorToken, token_id)
    if row is None or row.operator_id != g.me.id:
        abort(404, "You have no such token.")
    if row.revoked_at is None:
        row.revoked_at = utcnow()
        audit("token_revoke", target=row.label)
        db.session.commit()
    flash(f"Token {row.label} revoked: /api refuses it from now on.")
    return redirect(url_for("inbox.account"), 303)


@bp.post("/account/password")
def change_password():
    form = request.form
    if not g.me.password_matches(form.get("current") or ""):
        return render_account(error="Your current password is not right.", status=422)
    new = form.get("new") or ""
    if new != (form.get("confirm") or ""):
        return render_account(error="The new password and its confirmation differ.", status=422)
    try:
        check_password(new)
    except AccountError as exc:
        return render_account(error=f"{str(exc)[:1].upper()}{str(exc)[1:]}.", status=422)
    g.me.set_password(new)
    audit("password")
    db.session.commit()
    flash("Password changed.")
    return redirect(url_for("inbox.account"), 303)


@bp.get("/operators")
@admin_only
def operators():
    rows = db.session.execute(select(Operator).order_by(Operator.name)).scalars().all()
    tokens = dict(db.session.execute(select(OperatorToken.operator_id, func.count()).where(
        OperatorToken.revoked_at.is_(None)).group_by(OperatorToken.operator_id)).all())
    return render_template("inbox/operators.html", rows=rows, tokens=tokens)
