"""How a stored message looks in a thread: its kind, text, media, options and delivery ticks."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime

from flask import g, has_request_context
from markupsafe import Markup

from crm.base.models import utcnow
from integrations.whatsapp.inbound import describe

log = logging.getLogger(__name__)
MEDIA_ICONS = {"image": "🖼", "video": "🎞", "audio": "🔊", "voice": "🎤", "document": "📄", "sticker": "🏷",
               "location": "📍", "contacts": "👤", "reaction": "💬", "template": "📋"}


@dataclass
class View:
    kind: str
    text: str | None = None
    media: dict | None = None  # {"kind", "icon", "label", "detail"}
    options: list[str] = field(default_factory=list)  # buttons or list rows offered
    link: str | None = None


def _d(value) -> dict:
    return value if isinstance(value, dict) else {}


def _media(kind: str, body: dict, outbound: bool) -> View:
    label = {"voice": "Voice message", "sticker": "Sticker"}.get(kind, kind.capitalize())
    detail = [body.get("filename"), body.get("mime_type")]
    if outbound:
        detail.append(body.get("link") or (f"media id {body['id']}" if body.get("id") else None))
    return View(kind, body.get("caption"), {"kind": kind, "icon": MEDIA_ICONS.get(kind, "📎"), "label": label,
                                            "detail": " · ".join(str(x) for x in detail if x)})


def _location(loc: dict) -> View:
    try:
        lat, lon = float(loc.get("latitude")), float(loc.get("longitude"))
    except (TypeError, ValueError):
        lat = lon = None
    text = " — ".join(str(x) for x in (loc.get("name"), loc.get("address")) if x) or None
    link = f"https://www.openstreetmap.org/?mlat={lat}&mlon={lon}#map=16/{lat}/{lon}" if lat is not None else None
    return View("location", text, {"kind": "location", "icon": MEDIA_ICONS["location"], "label": "Location",
                                   "detail": f"{lat}, {lon}" if lat is not None else ""}, link=link)


def _contacts(cards) -> View:
    names = []
    for card in cards if isinstance(cards, list) else []:
        card = _d(card)
        name = _d(card.get("name")).get("formatted_name") or "?"
        phones = card.get("phones") if isinstance(card.get("phones"), list) else []
        phones = ", ".join(str(p.get("phone", "")) for p in phones if isinstance(p, dict))
        names.append(f"{name} {phones}".strip())
    return View("contacts", "\n".join(names) or None,
                {"kind": "contacts", "icon": MEDIA_ICONS["contacts"], "label": "Contact card", "detail": ""})


def inbound_view(payload: dict) -> View:
    kind, text, _reply_id = describe(payload or {})
    if kind in ("image", "video", "audio", "voice", "document", "sticker"):
        return _media(kind, _d(payload.get("audio" if kind == "voice" else kind)), outbound=False)
    if kind == "location":
        return _location(_d(payload.get("location")))
    if kind == "contacts":
        return _contacts(payload.get("contacts"))
    if kind in ("button_reply", "list_reply", "button"):
        return View("reply", f"↩ {text}" if text else None)
    if kind == "reaction":
        return View("reaction", f"reacted {text}" if text else "removed a reaction")
    if kind == "text":
        return View("text", text)
    return View(kind, text or f"[{kind} message]")


def outbound_view(payload: dict) -> View:
    kind = (payload or {}).get("type")
    if kind == "text":
        return View("text", _d(payload.get("text")).get("body"))
    if kind == "interactive":
        inter = _d(payload.get("interactive"))
        action = _d(inter.get("action"))
        options = [_d(b.get("reply")).get("title", "") for b in action.get("buttons") or []]
        for section in action.get("sections") or []:
            options += [row.get("title", "") for row in _d(section).get("rows") or [] if isinstance(row, dict)]
        header = _d(inter.get("header")).get("text")
        body = _d(inter.get("body")).get("text")
        return View("interactive", "\n".join(x for x in (header, body) if x), options=options)
    if kind == "template":
        tpl = _d(payload.get("template"))
        values = [p.get("text") or p.get("parameter_name") or p.get("type")
                  for c in tpl.get("components") or [] if isinstance(c, dict)
                  for p in c.get("parameters") or [] if isinstance(p, dict)]
        lang = _d(tpl.get("language")).get("code", "")
        return View("template", ", ".join(str(v) for v in values) or None,
                    {"kind": "template", "icon": MEDIA_ICONS["template"], "label": f"Template {tpl.get('name')}",
                     "detail": lang})
    if kind in ("image", "video", "audio", "document", "sticker"):
        return _media(kind, _d(payload.get(kind)), outbound=True)
    if kind == "location":
        return _location(_d(payload.get("location")))
    if kind == "contacts":
        return _contacts(payload.get("contacts"))
    if kind == "reaction":
        return View("reaction", f"reacted {_d(payload.get('reaction')).get('emoji', '')}")
    return View(kind or "unknown", f"[{kind} message]")


def message_view(row) -> View:
    """How to show a stored message; a payload of a shape we do not know shows as its summary."""
    try:
        payload = row.payload if isinstance(row.payload, dict) else {}
        return inbound_view(payload) if row.direction == "in" else outbound_view(payload)
    except (AttributeError, TypeError, KeyError, ValueError):
        log.warning("message %s has a payload the inbox cannot show", row.id, extra={"event": "inbox.bad_payload"})
        return View(row.type or "unknown", row.text or f"[{row.type} message]")


TICKS = {"queued": ("🕓", "queued"), "sending": ("🕓", "sending"), "sent": ("✓", "sent"),
         "delivered": ("✓✓", "delivered"), "read": ("✓✓", "read"), "failed": ("⚠", "failed"),
         "deleted": ("🗑", "deleted")}


def ticks(row) -> Markup:
    """The delivery mark of an outbound row: ✓ sent, ✓✓ delivered, blue ✓✓ read, and Meta's code and
    title when it failed (or while a retry waits). Built here, not in a template: a thread has hundreds."""
    symbol, word = TICKS.get(row.status, ("?", row.status))
    title = word
    if row.error_details:
        title = f"{word}: {row.error_details}"
    error = ""
    if row.status == "failed" or (row.status in ("queued", "sending") and row.error_code):
        text = " ".join(str(x) for x in (row.error_code, row.error_title) if x) or "failed"
        error = Markup(' <span class="error-code">{}: {}</span>').format(word, text)
    return Markup('<span class="tick tick-{}" title="{}">{}{}</span>').format(row.status, title, symbol, error)


def ago(when: datetime | None, now: datetime | None = None) -> str:
    if when is None:
        return ""
    seconds = max(0, int(((now or utcnow()) - when).total_seconds()))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min"
    if seconds < 86400:
        return f"{seconds // 3600} h {seconds % 3600 // 60} min"
    return f"{seconds // 86400} d"


def iso(when: datetime | None) -> str:
    return when.isoformat(timespec="seconds") + "Z" if when else ""


def clock(when: datetime | None) -> str:
    """A UTC time for the page; the page's script shows it in the browser's time zone."""
    if when is None:
        return ""
    today = g.setdefault("today", utcnow().date()) if has_request_context() else utcnow().date()
    return when.strftime("%H:%M") if when.date() == today else when.strftime("%d %b %H:%M")


def when(at: datetime | None) -> Markup:
    """A <time> element (what the ``when`` macro writes, for hot loops)."""
    if at is None:
        return Markup("")
    return Markup('<time datetime="{}">{}</time>').format(iso(at), clock(at))
