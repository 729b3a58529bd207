"""Parse Meta's webhook envelope into typed inbound messages, status updates and template status
updates (field ``message_template_status_update``, see ``integrations.whatsapp.templates``).

Parsing never raises on odd shapes: unknown objects, fields and message types
become warnings (and ``unknown`` messages), so that the webhook never answers
500 for something Meta would then re-deliver forever.

Everything returned can be stored as it is: every string of a stored payload is
cleaned (lone surrogates -> U+FFFD, NUL removed: ``integrations.storable``), the
searchable text is at most ``TEXT_MAX`` characters, ids that do not fit their
column are refused with a warning, and names are cut to their column.

A sender is a phone number (``from``, ``contacts[].wa_id``), a business-scoped
user id (``from_user_id``, ``contacts[].user_id``; docs/whatsapp-user-ids.md) or
both: a message with either is accepted.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from integrations.storable import clean_text, clip, storable
from integrations.whatsapp.messages import TEXT_MAX
from integrations.whatsapp.templates import TemplateStatusUpdate, parse_status_update

# Column sizes (crm.models): a longer id is not Meta's, a longer name is cut.
WA_ID_MAX, USER_ID_MAX, PNID_MAX, WAMID_MAX, NAME_MAX, ERROR_TITLE_MAX = 32, 64, 32, 128, 256, 512
INT32_MAX = 2**31 - 1
MEDIA = ("image", "audio", "video", "document", "sticker")
STATUS_VALUES = ("sent", "delivered", "read", "failed", "deleted")


@dataclass
class InboundMessage:
    phone_number_id: str
    wa_id: str | None  # the sender's phone number; None for a user known only by user_id
    wa_message_id: str
    type: str  # refined: text, button_reply, list_reply, nfm_reply, button, image, ..., unknown
    payload: dict
    profile_name: str | None = None
    user_id: str | None = None  # Meta's business-scoped user id (BSUID)
    timestamp: datetime | None = None
    text: str | None = None  # what the user said or chose, as text (at most TEXT_MAX characters)
    reply_id: str | None = None  # button / list reply id, template button payload
    context_id: str | None = None  # the message this one answers
    referral: dict | None = None
    identity: IdentityChange | None = None  # a system message: the sender's new number or user id


@dataclass(frozen=True)
class IdentityChange:
    """What a ``system`` message says changed about its sender: a new phone number
    (``user_changed_number``, which also brings a new user id) or a new business-scoped user
    id alone (``user_changed_user_id``). Each field is None when the message does not say."""

    kind: str
    new_wa_id: str | None = None
    new_user_id: str | None = None
    previous_user_id: str | None = None  # the user id the contact may still be known by


# system.type values that report a new identity (customer_changed_number is the older API's;
# its customer_identity_changed was a security-code change, not a new identity)
NUMBER_CHANGED = ("user_changed_number", "customer_changed_number")
USER_ID_CHANGED = ("user_changed_user_id",)


def identity_change(payload: dict) -> IdentityChange | None:
    """The identity change a stored ``system`` message reports, if it reports one."""
    system = _dict(payload.get("system")) if payload.get("type") == "system" else {}
    kind = system.get("type")
    if kind not in NUMBER_CHANGED + USER_ID_CHANGED:
        return None
    new_wa_id = _id(system.get("wa_id") or system.get("new_wa_id"), WA_ID_MAX) if kind in NUMBER_CHANGED else None
    change = IdentityChange(kind, new_wa_id, _id(system.get("user_id"), USER_ID_MAX),
                            _id(system.get("previous_user_id"), USER_ID_MAX))
    return change if change.new_wa_id or change.new_user_id else None


@dataclass
class StatusUpdate:
    phone_number_id: str
    wa_message_id: str
    status: str
    recipient_id: str | None = None
    recipient_user_id: str | None = None
    timestamp: datetime | None = None
    errors: list = field(default_factory=list)  # [{"code": int|None, "title", "message", "error_data": {"details"}}]
    callback_id: str | None = None


@dataclass
class ParsedWebhook:
    messages: list[InboundMessage] = field(default_factory=list)
    statuses: list[StatusUpdate] = field(default_factory=list)
    templates: list[TemplateStatusUpdate] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def _ts(value: Any) -> datetime | None:
    try:
        return datetime.fromtimestamp(int(value), UTC).replace(tzinfo=None)
    except (TypeError, ValueError, OverflowError, OSError):
        return None


def _dict(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


def _items(container: dict, name: str, where: str, out: ParsedWebhook) -> list:
    """``container[name]``, a list of the envelope; anything else there is dropped with a warning."""
    value = container.get(name)
    if value is None or isinstance(value, list):
        return value or []
    out.warnings.append(f"{where}{name} is {type(value).__name__}, not a list: ignored")
    return []


def _list(value: Any) -> list:
    return value if isinstance(value, list) else []


def _id(value: Any, limit: int) -> str | None:
    """An identifier that fits its column, or None (missing, not a string, empty or too long)."""
    if not isinstance(value, str):
        return None
    value = clean_text(value).strip()
    return value if 0 < len(value) <= limit else None


def _text(value: Any, limit: int) -> str | None:
    return clip(value, limit) if isinstance(value, str) else None


def _error(err: Any) -> dict:
    """A status error with the types our columns take (code an int32, title at most 512)."""
    err = _dict(err)
    code = err.get("code")
    if isinstance(code, str) and code.strip().isdigit():
        code = int(code)
    if not isinstance(code, int) or isinstance(code, bool) or not -INT32_MAX <= code <= INT32_MAX:
        code = None
    details = _dict(err.get("error_data")).get("details")
    return {"code": code, "title": _text(err.get("title"), ERROR_TITLE_MAX),
            "message": _text(err.get("message"), ERROR_TITLE_MAX),
            "error_data": {"details": _text(details, TEXT_MAX)}}


def describe(msg: dict) -> tuple[str, str | None, str | None]:
    """(refined type, text, reply id) of one Meta message object; the text is at most TEXT_MAX
    characters (what WhatsApp allows a user to send) and cleaned."""
    kind, text, reply_id = _describe(msg)
    return kind, _text(text, TEXT_MAX), reply_id if isinstance(reply_id, str) else None


def _describe(msg: dict) -> tuple[str, Any, Any]:
    kind = msg.get("type")
    if kind == "text":
        return "text", _dict(msg.get("text")).get("body"), None
    if kind == "interactive":
        inter = _dict(msg.get("interactive"))
        sub = inter.get("type")
        if sub in ("button_reply", "list_reply"):
            reply = _dict(inter.get(sub))
            return sub, reply.get("title"), reply.get("id")
        if sub == "nfm_reply":
            nfm = _dict(inter.get("nfm_reply"))
            return "nfm_reply", nfm.get("body") or nfm.get("response_json"), nfm.get("name")
        return "unknown", None, None
    if kind == "button":  # quick reply on a template
        button = _dict(msg.get("button"))
        return "button", button.get("text"), button.get("payload")
    if kind in MEDIA:
        media = _dict(msg.get(kind))
        if kind == "audio" and media.get("voice"):
            return "voice", None, None
        return kind, media.get("caption"), None
    if kind == "location":
        loc = _dict(msg.get("location"))
        label = loc.get("name") or loc.get("address")
        return "location", label or f"{loc.get('latitude')},{loc.get('longitude')}", None
    if kind == "contacts":
        names = [_dict(_dict(c).get("name")).get("formatted_name") for c in _list(msg.get("contacts"))]
        return "contacts", ", ".join(n for n in names if isinstance(n, str) and n) or None, None
    if kind == "reaction":
        return "reaction", _dict(msg.get("reaction")).get("emoji"), None
    if kind == "order":
        items = _list(_dict(msg.get("order")).get("product_items"))
        return "order", f"order of {len(items)} item(s)", None
    if kind == "system":
        return "system", _dict(msg.get("system")).get("body"), None
    if kind == "unsupported":
        return "unsupported", None, None
    return "unknown", None, None


def _sender(msg: dict, by_wa_id: dict, by_user_id: dict, contacts: list[dict]) -> tuple[str | None, str | None, dict]:
    """(phone number, user id, contact entry) of a message's sender.

    Meta's documentation shows ``from`` (phone) and ``from_user_id`` on messages and
    ``wa_id`` / ``user_id`` on ``contacts[]``, any of which may be missing: take what the
    message says, complete it from its contact entry, and when a message names neither and
    the change has exactly one contact, that contact is the sender.
    """
    wa_id, user_id = _id(msg.get("from"), WA_ID_MAX), _id(msg.get("from_user_id"), USER_ID_MAX)
    contact = (by_user_id.get(user_id) if user_id else None) or (by_wa_id.get(wa_id) if wa_id else None)
    if contact is None and not wa_id and not user_id and len(contacts) == 1:
        contact = contacts[0]
    contact = contact or {}
    wa_id = wa_id or _id(contact.get("wa_id"), WA_ID_MAX)
    user_id = user_id or _id(contact.get("user_id"), USER_ID_MAX)
    return wa_id, user_id, contact


def parse_webhook(body: Any) -> ParsedWebhook:
    out = ParsedWebhook()
    if not isinstance(body, dict):
        out.warnings.append("payload is not a JSON object")
        return out
    if body.get("object") != "whatsapp_business_account":
        out.warnings.append(f"unknown object {clip(str(body.get('object')), 64)!r}")
        return out
    for e_index, entry in enumerate(_items(body, "entry", "", out)):
        if not isinstance(entry, dict):
            out.warnings.append(f"entry[{e_index}] is {type(entry).__name__}, not an object: ignored")
            continue
        for c_index, change in enumerate(_items(entry, "changes", f"entry[{e_index}].", out)):
            change = _dict(change)
            where = f"entry[{e_index}].changes[{c_index}]"
            if change.get("field") == "message_template_status_update":
                update = parse_status_update(_dict(entry).get("id"), change.get("value"), _dict(entry).get("time"))
                if update is None:
                    out.warnings.append(f"{where}: template status update without a template name or language")
                else:
                    if update.event == "UNKNOWN":
                        out.warnings.append(f"{where}: unknown template event {update.raw_event!r}")
                    out.templates.append(update)
                continue
            if change.get("field") != "messages":
                out.warnings.append(f"{where}: unhandled field {clip(str(change.get('field')), 64)!r}")
                continue
            value = _dict(change.get("value"))
            pnid = _id(_dict(value.get("metadata")).get("phone_number_id"), PNID_MAX)
            if pnid is None:
                out.warnings.append(f"{where}: value.metadata.phone_number_id missing or invalid")
                continue
            contacts = [_dict(c) for c in _list(value.get("contacts"))]
            by_wa_id = {c["wa_id"]: c for c in contacts if isinstance(c.get("wa_id"), str)}
            by_user_id = {c["user_id"]: c for c in contacts if isinstance(c.get("user_id"), str)}
            for m_index, msg in enumerate(_items(value, "messages", f"{where}.value.", out)):
                msg = _dict(msg)
                wa_id, user_id, contact = _sender(msg, by_wa_id, by_user_id, contacts)
                wamid = _id(msg.get("id"), WAMID_MAX)
                if not (wa_id or user_id) or not wamid:
                    out.warnings.append(f"{where}.messages[{m_index}]: no sender ('from', 'from_user_id', "
                                        "contacts[].user_id) or no 'id'")
                    continue
                payload = storable(msg)
                kind, text, reply_id = describe(payload)
                if kind == "unknown":
                    out.warnings.append(f"{where}.messages[{m_index}]: unknown type {clip(str(msg.get('type')), 64)!r}")
                out.messages.append(
                    InboundMessage(
                        phone_number_id=pnid,
                        wa_id=wa_id,
                        wa_message_id=wamid,
                        type=kind,
                        payload=payload,
                        profile_name=_text(_dict(contact.get("profile")).get("name"), NAME_MAX),
                        user_id=user_id,
                        timestamp=_ts(msg.get("timestamp")),
                        text=text,
                        reply_id=reply_id,
                        context_id=_id(_dict(payload.get("context")).get("id"), WAMID_MAX),
                        referral=payload.get("referral") if isinstance(payload.get("referral"), dict) else None,
                        identity=identity_change(payload),
                    )
                )
            for s_index, status in enumerate(_items(value, "statuses", f"{where}.value.", out)):
                status = _dict(status)
                wamid = _id(status.get("id"), WAMID_MAX)
                if status.get("status") not in STATUS_VALUES or wamid is None:
                    out.warnings.append(f"{where}.statuses[{s_index}]: unknown status "
                                        f"{clip(str(status.get('status')), 64)!r}")
                    continue
                out.statuses.append(
                    StatusUpdate(
                        phone_number_id=pnid,
                        wa_message_id=wamid,
                        status=status["status"],
                        recipient_id=_id(status.get("recipient_id"), WA_ID_MAX),
                        recipient_user_id=_id(status.get("recipient_user_id"), USER_ID_MAX),
                        timestamp=_ts(status.get("timestamp")),
                        errors=[_error(e) for e in _list(status.get("errors"))],
                        callback_id=_id(status.get("biz_opaque_callback_data"), 512),
                    )
                )
            for err in _list(value.get("errors")):
                err = _error(err)
                out.warnings.append(f"{where}: Meta reported error {err['code']}: {err['title']}")
    return out
