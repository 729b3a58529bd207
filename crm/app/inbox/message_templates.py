"""Approved message templates for the reply box, and the send components built from a form.

``approved_templates()`` is the one place the inbox reads templates from: the template store
(``crm.base.templates``, filled by ``flask --app wsgi templates sync``). A send of the chosen
template still goes through the operator API's send path, which checks it against the store
(``require_approved``) like every other template send.

Parameters: ``{{1}}`` (positional) or ``{{name}}`` (named) placeholders in a TEXT header, the
body, and URL buttons; a media header (IMAGE, VIDEO, DOCUMENT) takes a link. Values are
checked the way Meta checks them (no new lines or tabs, at most 4 spaces in a row), so a
mistake is shown on the page rather than coming back as a failed send.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from crm.base.templates import approved_templates as stored_templates

PLACEHOLDER = re.compile(r"{{\s*([A-Za-z0-9_]+)\s*}}")
PARAM_MAX = 1024
MEDIA_FORMATS = {"IMAGE": "image", "VIDEO": "video", "DOCUMENT": "document"}

class TemplateInputError(ValueError):
    """A template choice or parameter the form cannot send (the message says which)."""


@dataclass(frozen=True)
class Param:
    key: str  # form field: header-1, body-2, body-name, button0-1, header-media
    component: str  # header | body | button
    name: str  # "1", "2", ... or the named parameter
    label: str
    index: int | None = None  # button index
    media: str | None = None  # image | video | document (a header link)


@dataclass
class TemplateInfo:
    name: str
    language: str
    category: str
    components: list = field(default_factory=list)

    @property
    def key(self) -> str:
        return f"{self.name}:{self.language}"

    def part(self, kind: str) -> dict:
        return next((c for c in self.components if isinstance(c, dict) and str(c.get("type")).upper() == kind), {})

    @property
    def preview(self) -> list[tuple[str, str]]:
        """(component, text) of the header, body and footer, placeholders kept."""
        header = self.part("HEADER")
        fmt = str(header.get("format") or "TEXT").upper() if header else None
        pieces = [("header", header.get("text") if fmt == "TEXT" else f"[{fmt.lower()}]" if fmt else None),
                  ("body", self.part("BODY").get("text")), ("footer", self.part("FOOTER").get("text"))]
        return [(kind, text) for kind, text in pieces if text]

    @property
    def text(self) -> str:
        return "\n".join(text for _kind, text in self.preview)

    @property
    def params(self) -> list[Param]:
        out: list[Param] = []
        header = self.part("HEADER")
        fmt = str(header.get("format") or "TEXT").upper() if header else None
        if fmt in MEDIA_FORMATS:
            out.append(Param("header-media", "header", "", f"header {MEDIA_FORMATS[fmt]} link (https://...)",
                             media=MEDIA_FORMATS[fmt]))
        elif fmt == "TEXT":
            out += [Param(f"header-{n}", "header", n, f"header {{{{{n}}}}}") for n in _names(header.get("text"))]
        out += [Param(f"body-{n}", "body", n, f"body {{{{{n}}}}}") for n in _names(self.part("BODY").get("text"))]
        for i, button in enumerate(self.part("BUTTONS").get("buttons") or []):
            if isinstance(button, dict) and str(button.get("type")).upper() == "URL":
                out += [Param(f"button{i}-{n}", "button", n, f"button '{button.get('text', i)}' {{{{{n}}}}}",
                              index=i) for n in _names(button.get("url"))]
        return out

    def components_for(self, values: dict[str, str]) -> list[dict]:
        """The ``components`` of a send, from form values keyed by ``Param.key``."""
        header, body, buttons = [], [], {}
        for param in self.params:
            value = (values.get(param.key) or "").strip()
            if not value:
                raise TemplateInputError(f"fill in {param.label}")
            if param.media:
                if not value.startswith("https://") or len(value) > 2048:
                    raise TemplateInputError(f"{param.label}: an https:// link is needed")
                header.append({"type": param.media, param.media: {"link": value}})
                continue
            check_value(param.label, value)
            item = {"type": "text", "text": value}
            if not param.name.isdigit():
                item["parameter_name"] = param.name
            if param.component == "header":
                header.append(item)
            elif param.component == "body":
                body.append(item)
            else:
                buttons.setdefault(param.index, []).append(item)
        out = []
        if header:
            out.append({"type": "header", "parameters": header})
        if body:
            out.append({"type": "body", "parameters": body})
        for index, parameters in sorted(buttons.items()):
            out.append({"type": "button", "sub_type": "url", "index": str(index), "parameters": parameters})
        return out


def _names(text) -> list[str]:
    seen: list[str] = []
    for name in PLACEHOLDER.findall(text or ""):
        if name not in seen:
            seen.append(name)
    return seen


def check_value(label: str, value: str) -> None:
    if len(value) > PARAM_MAX:
        raise TemplateInputError(f"{label}: at most {PARAM_MAX} characters")
    if "\n" in value or "\t" in value or "     " in value:
        raise TemplateInputError(f"{label}: WhatsApp refuses new lines, tabs or more than 4 spaces in a row "
                                 "in a template parameter")


def approved_templates() -> list[TemplateInfo]:
    """Approved templates, by name and language."""
    rows = stored_templates()
    # a template known only from a status webhook has no components yet: its parameters are unknown
    out = [TemplateInfo(r.name, r.language, r.category or "", list(r.components)) for r in rows
           if r.components is not None]
    return sorted(out, key=lambda t: (t.name, t.language))


def find_template(key: str) -> TemplateInfo:
    for template in approved_templates():
        if template.key == key:
            return template
    raise TemplateInputError("choose one of the approved templates")
