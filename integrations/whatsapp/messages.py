"""Builders for outbound WhatsApp messages, checked against WhatsApp's limits.

Each builder returns the message object Meta expects *without* ``to`` and
``messaging_product`` (the client adds those). A message that breaks a limit
raises ``MessageLimitError`` naming the limit, before anything is sent.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

TEXT_MAX = 4096
INTERACTIVE_BODY_MAX = 1024
LIST_BODY_MAX = 4096
HEADER_MAX = 60
FOOTER_MAX = 60
BUTTONS_MAX = 3
BUTTON_TITLE_MAX = 20
BUTTON_ID_MAX = 256
LIST_ROWS_MAX = 10
LIST_SECTIONS_MAX = 10
LIST_BUTTON_MAX = 20
ROW_TITLE_MAX = 24
ROW_DESCRIPTION_MAX = 72
ROW_ID_MAX = 200
SECTION_TITLE_MAX = 24
CAPTION_MAX = 1024
MEDIA_TYPES = ("image", "audio", "video", "document", "sticker")
CAPTIONED = ("image", "video", "document")


class MessageLimitError(ValueError):
    """An outbound message breaks a WhatsApp Cloud API limit."""


def _check_len(value: str | None, limit: int, what: str) -> None:
    if value is not None and len(value) > limit:
        raise MessageLimitError(f"{what} is {len(value)} characters; the limit is {limit}")


def _require(value: Any, what: str) -> None:
    if value is None or value == "":
        raise MessageLimitError(f"{what} is required")


def text(body: str, preview_url: bool = False) -> dict:
    _require(body, "text body")
    _check_len(body, TEXT_MAX, "text body")
    return {"type": "text", "text": {"body": body, "preview_url": preview_url}}


def _header_footer(interactive: dict, header: str | None, footer: str | None) -> None:
    if header:
        _check_len(header, HEADER_MAX, "header text")
        interactive["header"] = {"type": "text", "text": header}
    if footer:
        _check_len(footer, FOOTER_MAX, "footer text")
        interactive["footer"] = {"text": footer}


def buttons(body: str, options: Iterable[tuple[str, str]], header: str | None = None,
            footer: str | None = None) -> dict:
    """Reply buttons: ``options`` is (id, title) pairs, 1 to 3 of them."""
    options = list(options)
    _require(body, "button message body")
    _check_len(body, INTERACTIVE_BODY_MAX, "button message body")
    if not 1 <= len(options) <= BUTTONS_MAX:
        raise MessageLimitError(f"reply buttons: {len(options)} given; 1 to {BUTTONS_MAX} allowed")
    seen_ids, seen_titles = set(), set()
    for reply_id, title in options:
        _require(reply_id, "button id")
        _require(title, "button title")
        _check_len(title, BUTTON_TITLE_MAX, f"button title {title!r}")
        _check_len(reply_id, BUTTON_ID_MAX, "button id")
        if reply_id in seen_ids or title in seen_titles:
            raise MessageLimitError(f"button ids and titles must be unique ({reply_id!r}, {title!r})")
        seen_ids.add(reply_id)
        seen_titles.add(title)
    interactive = {
        "type": "button",
        "body": {"text": body},
        "action": {"buttons": [{"type": "reply", "reply": {"id": i, "title": t}} for i, t in options]},
    }
    _header_footer(interactive, header, footer)
    return {"type": "interactive", "interactive": interactive}


def list_message(body: str, button: str, sections: list[dict], header: str | None = None,
                 footer: str | None = None) -> dict:
    """A list message. ``sections``: [{"title": str|None, "rows": [{"id", "title", "description"?}]}]."""
    _require(body, "list message body")
    _check_len(body, LIST_BODY_MAX, "list message body")
    _require(button, "list button label")
    _check_len(button, LIST_BUTTON_MAX, "list button label")
    if not 1 <= len(sections) <= LIST_SECTIONS_MAX:
        raise MessageLimitError(f"list sections: {len(sections)} given; 1 to {LIST_SECTIONS_MAX} allowed")
    total = sum(len(s.get("rows", [])) for s in sections)
    if not 1 <= total <= LIST_ROWS_MAX:
        raise MessageLimitError(f"list rows: {total} in all; 1 to {LIST_ROWS_MAX} allowed")
    if len(sections) > 1 and not all(s.get("title") for s in sections):
        raise MessageLimitError("list sections need a title when there are several")
    out_sections, seen = [], set()
    for section in sections:
        rows = []
        for row in section["rows"]:
            _require(row.get("id"), "list row id")
            _require(row.get("title"), "list row title")
            _check_len(row["title"], ROW_TITLE_MAX, f"list row title {row['title']!r}")
            _check_len(row["id"], ROW_ID_MAX, "list row id")
            if row["id"] in seen:
                raise MessageLimitError(f"list row ids must be unique ({row['id']!r})")
            seen.add(row["id"])
            item = {"id": row["id"], "title": row["title"]}
            if row.get("description"):
                _check_len(row["description"], ROW_DESCRIPTION_MAX, "list row description")
                item["description"] = row["description"]
            rows.append(item)
        out = {"rows": rows}
        if section.get("title"):
            _check_len(section["title"], SECTION_TITLE_MAX, "list section title")
            out["title"] = section["title"]
        out_sections.append(out)
    interactive = {"type": "list", "body": {"text": body},
                   "action": {"button": button, "sections": out_sections}}
    _header_footer(interactive, header, footer)
    return {"type": "interactive", "interactive": interactive}


def media(kind: str, *, id: str | None = None, link: str | None = None, caption: str | None = None,
          filename: str | None = None) -> dict:
    if kind not in MEDIA_TYPES:
        raise MessageLimitError(f"media type {kind!r} is not one of {', '.join(MEDIA_TYPES)}")
    if bool(id) == bool(link):
        raise MessageLimitError(f"{kind}: give exactly one of a media id or a link")
    obj: dict[str, Any] = {"id": id} if id else {"link": link}
    if caption:
        if kind not in CAPTIONED:
            raise MessageLimitError(f"{kind} messages cannot have a caption")
        _check_len(caption, CAPTION_MAX, f"{kind} caption")
        obj["caption"] = caption
    if filename:
        if kind != "document":
            raise MessageLimitError("only documents have a filename")
        obj["filename"] = filename
    return {"type": kind, kind: obj}


def template(name: str, language: str = "en_US", components: list[dict] | None = None) -> dict:
    _require(name, "template name")
    body: dict[str, Any] = {"name": name, "language": {"code": language}}
    if components:
        body["components"] = components
    return {"type": "template", "template": body}


def location(latitude: float, longitude: float, name: str | None = None,
             address: str | None = None) -> dict:
    if not (-90 <= float(latitude) <= 90 and -180 <= float(longitude) <= 180):
        raise MessageLimitError("location: latitude must be within ±90 and longitude within ±180")
    loc: dict[str, Any] = {"latitude": float(latitude), "longitude": float(longitude)}
    if name:
        loc["name"] = name
    if address:
        loc["address"] = address
    return {"type": "location", "location": loc}


def contacts(cards: list[dict]) -> dict:
    """Contact cards; WhatsApp wants ``contacts`` as a top-level array."""
    if not cards:
        raise MessageLimitError("contacts: at least one contact card is required")
    for card in cards:
        if not (card.get("name") or {}).get("formatted_name"):
            raise MessageLimitError("contacts: every card needs name.formatted_name")
    return {"type": "contacts", "contacts": cards}


def recipient(wa_id: str | None, user_id: str | None = None) -> dict:
    """Who a message goes to: ``to`` a phone number when we know it (Meta prefers it, and
    ``to`` wins when both are sent), else ``recipient``: a business-scoped user id
    (docs/whatsapp-user-ids.md)."""
    if wa_id:
        return {"to": wa_id}
    if user_id:
        return {"recipient": user_id}
    raise MessageLimitError("a message needs a phone number or a user id to go to")


def mark_read(message_id: str, typing: bool = True) -> dict:
    """Body of the mark-as-read request, optionally with the typing indicator."""
    body: dict[str, Any] = {"messaging_product": "whatsapp", "status": "read", "message_id": message_id}
    if typing:
        body["typing_indicator"] = {"type": "text"}
    return body


def summary(message: dict) -> str:
    """A one-line text for search and display of an outbound message object."""
    kind = message.get("type")
    if kind == "text":
        return message["text"]["body"]
    if kind == "interactive":
        return message["interactive"].get("body", {}).get("text", "")
    if kind in MEDIA_TYPES:
        return message[kind].get("caption") or f"[{kind}]"
    if kind == "template":
        return f"[template {message['template']['name']}]"
    return f"[{kind}]"
