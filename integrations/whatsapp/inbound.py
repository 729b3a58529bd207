"""Parse Meta's webhook envelope into typed inbound messages, status updates and template status
updates (field ``message_template_status_update``, see ``integrations.whatsapp.templates``).

Parsing never raises on odd shapes: unknown objects, fields and message types
become warnings (and ``unknown`` messages), so that the webhook never answers
500 for something Meta would then re-deliver forever.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from integrations.whatsapp.templates import TemplateStatusUpdate, parse_status_update

MEDIA = ("image", "audio", "video", "document", "sticker")
STATUS_VALUES = ("sent", "delivered", "read", "failed", "deleted")


@dataclass
class InboundMessage:
    phone_number_id: str
    wa_id: str
    wa_message_id: str
    type: str  # refined: text, button_reply, list_reply, nfm_reply, button, image, ..., unknown
    payload: dict
    profile_name: str | None = None
    user_id: str | None = None
    timestamp: datetime | None = None
    text: str | None = None  # what the user said or chose, as text
    reply_id: str | None = None  # button / list reply id, template button payload
    context_id: str | None = None  # the message this one answers
    referral: dict | None = None


@dataclass
class StatusUpdate:
    phone_number_id: str
    wa_message_id: str
    status: str
    recipient_id: str | None = None
    timestamp: datetime | None = None
    errors: list = field(default_factory=list)
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


def describe(msg: dict) -> tuple[str, str | None, str | None]:
    """(refined type, text, reply id) of one Meta message object."""
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


def parse_webhook(body: Any) -> ParsedWebhook:
    out = ParsedWebhook()
    if not isinstance(body, dict):
        out.warnings.append("payload is not a JSON object")
        return out
    if body.get("object") != "whatsapp_business_account":
        out.warnings.append(f"unknown object {body.get('object')!r}")
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
                out.warnings.append(f"{where}: unhandled field {change.get('field')!r}")
                continue
            value = _dict(change.get("value"))
            pnid = _dict(value.get("metadata")).get("phone_number_id")
            if not isinstance(pnid, str) or not pnid:
                out.warnings.append(f"{where}: value.metadata.phone_number_id missing")
                continue
            profiles = {}
            for contact in _list(value.get("contacts")):
                contact = _dict(contact)
                if isinstance(contact.get("wa_id"), str):
                    profiles[contact["wa_id"]] = contact
            for m_index, msg in enumerate(_items(value, "messages", f"{where}.value.", out)):
                msg = _dict(msg)
                wa_id, wamid = msg.get("from"), msg.get("id")
                if not isinstance(wa_id, str) or not isinstance(wamid, str) or not wa_id or not wamid:
                    out.warnings.append(f"{where}.messages[{m_index}]: 'from' or 'id' missing")
                    continue
                kind, text, reply_id = describe(msg)
                if kind == "unknown":
                    out.warnings.append(f"{where}.messages[{m_index}]: unknown type {msg.get('type')!r}")
                profile = profiles.get(wa_id, {})
                out.messages.append(
                    InboundMessage(
                        phone_number_id=pnid,
                        wa_id=wa_id,
                        wa_message_id=wamid,
                        type=kind,
                        payload=msg,
                        profile_name=_dict(profile.get("profile")).get("name"),
                        user_id=profile.get("user_id") or msg.get("from_user_id"),
                        timestamp=_ts(msg.get("timestamp")),
                        text=text if isinstance(text, str) else None,
                        reply_id=reply_id if isinstance(reply_id, str) else None,
                        context_id=_dict(msg.get("context")).get("id"),
                        referral=msg.get("referral") if isinstance(msg.get("referral"), dict) else None,
                    )
                )
            for s_index, status in enumerate(_items(value, "statuses", f"{where}.value.", out)):
                status = _dict(status)
                if status.get("status") not in STATUS_VALUES or not isinstance(status.get("id"), str):
                    out.warnings.append(f"{where}.statuses[{s_index}]: unknown status {status.get('status')!r}")
                    continue
                out.statuses.append(
                    StatusUpdate(
                        phone_number_id=pnid,
                        wa_message_id=status["id"],
                        status=status["status"],
                        recipient_id=status.get("recipient_id"),
                        timestamp=_ts(status.get("timestamp")),
                        errors=_list(status.get("errors")),
                        callback_id=status.get("biz_opaque_callback_data"),
                    )
                )
            for err in _list(value.get("errors")):
                out.warnings.append(f"{where}: Meta reported error {_dict(err).get('code')}: {_dict(err).get('title')}")
    return out
