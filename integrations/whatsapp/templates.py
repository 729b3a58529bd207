"""Message templates: the WhatsApp Business Account's template list, and template parameters.

Pure: no Flask, no database. ``TemplatesClient`` reads ``GET /<WABA_ID>/message_templates``;
``count_parameters`` and ``check_send_components`` say how many values a template needs and
whether a send supplies them; ``parse_status_update`` reads the ``message_template_status_update``
webhook field.

What Meta documents (checked against the Graph API and WhatsApp Business Platform reference pages):

* ``GET /<WHATSAPP_BUSINESS_ACCOUNT_ID>/message_templates`` (permission
  ``whatsapp_business_management``) answers ``{"data": [template, ...], "paging": {"cursors":
  {"before", "after"}, "next"?}}``. A template node has ``id`` (numeric string), ``name``,
  ``language`` (``en_US``), ``status``, ``category`` and ``components``; we ask for exactly these
  with ``fields=``. Paging is Graph's cursor paging: ``limit`` is the page size, ``after`` the
  cursor of the last item returned; "do not depend on the number of results being fewer than the
  limit ... use the absence of ``next``". We send our own request with ``after=`` (never follow
  the ``next`` URL itself: it points wherever the answer says).
* Template ``status`` values: APPROVED, IN_APPEAL, PENDING, REJECTED, PENDING_DELETION, DELETED,
  DISABLED, PAUSED, LIMIT_EXCEEDED (node reference), plus ARCHIVED (status webhook). Anything
  else is ``TemplateStatus.UNKNOWN`` (the pywa approach): a new status never breaks a sync.
* Webhook field ``message_template_status_update``: ``entry[].id`` is the WABA id and
  ``changes[].value`` holds ``event``, ``message_template_id`` (an integer), ``message_template_name``,
  ``message_template_language``, ``reason`` (a rejection reason, ``NONE``, or null when a template
  is scheduled for deletion) and ``message_template_category``; optional ``disable_info``,
  ``other_info`` (pause/lock title and description) and ``rejection_info``. Events: APPROVED,
  ARCHIVED, UNARCHIVED, DELETED, DISABLED, FLAGGED (negative feedback, at risk; still sendable),
  IN_APPEAL, LIMIT_EXCEEDED, LOCKED / UNLOCKED (editing), PAUSED, PENDING, REINSTATED (sendable
  again), PENDING_DELETION, REJECTED. ``EVENT_STATUS`` maps an event to the status it implies;
  events that imply none (FLAGGED, LOCKED, UNLOCKED, UNARCHIVED) leave the status alone.
* Parameters: a template's text holds positional ``{{1}}``, ``{{2}}`` (numbered from 1, no
  gaps) or, with ``parameter_format: NAMED``, named ``{{first_name}}`` placeholders (lowercase
  letters, digits, underscores); a template uses one kind. A TEXT header supports one parameter;
  an IMAGE, VIDEO, GIF, DOCUMENT or LOCATION header needs one media/location parameter at send
  time; the body any number; a URL button one when its ``url`` holds a placeholder, a COPY_CODE
  or OTP button one (the code). A send passes them as ``components: [{"type": "header"|"body",
  "parameters": [...]}, {"type": "button", "sub_type": "url", "index": "0", "parameters": [...]}]``,
  named ones with ``parameter_name``. A repeated placeholder is one parameter.
"""

from __future__ import annotations

import logging
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import requests

from integrations import http

log = logging.getLogger(__name__)

FIELDS = "id,name,language,status,category,components"
PAGE_SIZE = 100
MAX_PAGES = 1000  # 100 000 templates: a loop guard, far above Meta's per-account limits
# Graph codes worth another try: temporary errors and the throttles (4 app, 17 user, 32 page,
# 613 calls, 80008 "too many calls to this WhatsApp Business account").
RETRYABLE_CODES = {1, 2, 4, 17, 32, 613, 80008}


class _MetaValue(StrEnum):
    """Meta's spelling in any case; a value this version does not know is ``UNKNOWN``."""

    @classmethod
    def _missing_(cls, value):
        if isinstance(value, str) and value.upper() in cls.__members__:
            return cls[value.upper()]
        return cls.__members__["UNKNOWN"]


class TemplateStatus(_MetaValue):
    APPROVED = "APPROVED"
    PENDING = "PENDING"
    REJECTED = "REJECTED"
    PAUSED = "PAUSED"
    DISABLED = "DISABLED"
    IN_APPEAL = "IN_APPEAL"
    PENDING_DELETION = "PENDING_DELETION"
    DELETED = "DELETED"
    ARCHIVED = "ARCHIVED"
    LIMIT_EXCEEDED = "LIMIT_EXCEEDED"
    UNKNOWN = "UNKNOWN"


class TemplateEvent(_MetaValue):
    APPROVED = "APPROVED"
    PENDING = "PENDING"
    REJECTED = "REJECTED"
    PAUSED = "PAUSED"
    DISABLED = "DISABLED"
    IN_APPEAL = "IN_APPEAL"
    PENDING_DELETION = "PENDING_DELETION"
    DELETED = "DELETED"
    ARCHIVED = "ARCHIVED"
    UNARCHIVED = "UNARCHIVED"
    LIMIT_EXCEEDED = "LIMIT_EXCEEDED"
    FLAGGED = "FLAGGED"
    REINSTATED = "REINSTATED"
    LOCKED = "LOCKED"
    UNLOCKED = "UNLOCKED"
    UNKNOWN = "UNKNOWN"


# The status an event puts the template in; None: the event says nothing about it (a sync does).
EVENT_STATUS: dict[TemplateEvent, TemplateStatus | None] = {
    **{TemplateEvent(s.value): s for s in TemplateStatus if s is not TemplateStatus.UNKNOWN},
    TemplateEvent.REINSTATED: TemplateStatus.APPROVED,
    TemplateEvent.FLAGGED: None,  # at risk, still sendable
    TemplateEvent.LOCKED: None,
    TemplateEvent.UNLOCKED: None,
    TemplateEvent.UNARCHIVED: None,  # back to what it was before: the sync triggered by it says
    TemplateEvent.UNKNOWN: None,
}


def normalize_language(code: Any) -> str:
    """``en-US`` (as some webhook examples spell it) and ``en_US`` are one language."""
    return str(code or "").strip().replace("-", "_")


# --- parameters -------------------------------------------------------------------------------

_PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z0-9_]+)\s*\}\}")
MEDIA_HEADERS = {"IMAGE", "VIDEO", "GIF", "DOCUMENT", "LOCATION", "PRODUCT"}
# Buttons whose send needs a value: a URL with a placeholder, a coupon code, a one-time password,
# a multi-product message's sections.
VALUE_BUTTONS = {"COPY_CODE", "OTP", "MPM"}
KNOWN_COMPONENTS = {"HEADER", "BODY", "FOOTER", "BUTTONS"}


def placeholders(text: Any) -> list[str]:
    """Distinct placeholders of a text, in order of first use."""
    seen: list[str] = []
    for name in _PLACEHOLDER.findall(text if isinstance(text, str) else ""):
        if name not in seen:
            seen.append(name)
    return seen


@dataclass(frozen=True)
class TemplateParams:
    """What a send of the template must supply."""

    parameter_format: str = "POSITIONAL"  # POSITIONAL | NAMED
    header_format: str | None = None  # TEXT, IMAGE, VIDEO, GIF, DOCUMENT, LOCATION, PRODUCT
    header: int = 0
    header_names: tuple[str, ...] = ()
    body: int = 0
    body_names: tuple[str, ...] = ()
    buttons: tuple[tuple[int, str], ...] = ()  # (index, button type) of buttons that need a value
    # False when the template has components we do not count (carousels, limited-time offers):
    # sends of it are not checked here (Meta still checks them).
    checkable: bool = True

    def counts(self) -> dict:
        return {"header": self.header, "body": self.body, "buttons": len(self.buttons)}


def count_parameters(components: Any, parameter_format: str | None = None) -> TemplateParams:
    """Count the parameters of a template from its ``components`` (as the Graph API lists them)."""
    header_format, header_names, body_names, buttons, checkable = None, [], [], [], True
    for comp in components if isinstance(components, list) else []:
        if not isinstance(comp, dict):
            continue
        kind = str(comp.get("type") or "").upper()
        if kind not in KNOWN_COMPONENTS:
            checkable = False
        elif kind == "HEADER":
            header_format = str(comp.get("format") or "TEXT").upper()
            header_names = placeholders(comp.get("text")) if header_format == "TEXT" else [header_format.lower()]
        elif kind == "BODY":
            body_names = placeholders(comp.get("text"))
        elif kind == "BUTTONS":
            for index, button in enumerate(comp.get("buttons") or []):
                if not isinstance(button, dict):
                    continue
                btype = str(button.get("type") or "").upper()
                if (btype == "URL" and placeholders(button.get("url"))) or btype in VALUE_BUTTONS:
                    buttons.append((index, btype))
    names = (header_names if header_format == "TEXT" else []) + body_names
    fmt = (parameter_format or "").upper()
    if fmt not in ("POSITIONAL", "NAMED"):
        fmt = "NAMED" if any(not n.isdigit() for n in names) else "POSITIONAL"
    named = fmt == "NAMED"
    return TemplateParams(
        parameter_format=fmt, header_format=header_format, header=len(header_names),
        header_names=tuple(header_names) if named and header_format == "TEXT" else (),
        body=len(body_names), body_names=tuple(body_names) if named else (),
        buttons=tuple(buttons), checkable=checkable)


def _by_type(components: list, kind: str) -> list[dict]:
    return [c for c in components if isinstance(c, dict) and str(c.get("type") or "").lower() == kind]


def check_send_components(params: TemplateParams, components: Any) -> list[str]:
    """Problems with a send's ``components`` for a template needing ``params`` ([] when fine)."""
    if not params.checkable:
        return []
    if components is None:
        components = []
    if not isinstance(components, list):
        return ["'components' must be a list"]
    problems = []
    for kind, expected, names, what in (
            ("header", params.header, params.header_names, f"header ({(params.header_format or 'TEXT').lower()})"),
            ("body", params.body, params.body_names, "body")):
        given = [p for c in _by_type(components, kind) for p in (c.get("parameters") or [])]
        if len(given) != expected:
            problems.append(f"the {what} expects {expected} parameter(s); got {len(given)}")
        elif names:
            got = [p.get("parameter_name") if isinstance(p, dict) else None for p in given]
            missing = [n for n in names if n not in got]
            if missing:
                problems.append(f"the {what} needs named parameter(s) {', '.join(missing)} "
                                "(each with 'parameter_name')")
    sent_buttons = {str(c.get("index")): c for c in _by_type(components, "button")}
    for index, btype in params.buttons:
        button = sent_buttons.get(str(index))
        if button is None or not button.get("parameters"):
            problems.append(f"button {index} ({btype}) expects 1 parameter; got none "
                            f"(a 'button' component with index {index})")
    return problems


# --- templates as listed ----------------------------------------------------------------------

@dataclass(frozen=True)
class RemoteTemplate:
    id: str
    name: str
    language: str
    category: str | None
    status: TemplateStatus
    components: list
    params: TemplateParams


# Column sizes of the store (crm.base.templates): longer values are not Meta's and are skipped.
NAME_MAX, LANGUAGE_MAX, ID_MAX, CATEGORY_MAX = 512, 16, 32, 32


def _name(value: Any, language: str) -> str | None:
    """The template name when it and the language fit the store."""
    if isinstance(value, str) and 0 < len(value) <= NAME_MAX and 0 < len(language) <= LANGUAGE_MAX:
        return value
    return None


def parse_template(data: Any) -> RemoteTemplate | None:
    """One template node; None when it lacks a usable name or language (the caller warns)."""
    if not isinstance(data, dict):
        return None
    language = normalize_language(data.get("language"))
    name = _name(data.get("name"), language)
    if name is None:
        return None
    raw_components = data.get("components")
    components: list = raw_components if isinstance(raw_components, list) else []
    return RemoteTemplate(
        id=str(data.get("id") or "")[:ID_MAX], name=name, language=language,
        category=str(data["category"]).upper()[:CATEGORY_MAX] if data.get("category") else None,
        status=TemplateStatus(str(data.get("status") or "")), components=components,
        params=count_parameters(components, data.get("parameter_format")))


@dataclass(frozen=True)
class TemplateStatusUpdate:
    """One ``message_template_status_update`` webhook change."""

    waba_id: str
    template_id: str
    name: str
    language: str
    event: TemplateEvent
    raw_event: str
    reason: str | None = None
    category: str | None = None
    time: datetime | None = None  # the entry's ``time``: when Meta triggered the webhook (naive UTC)

    @property
    def status(self) -> TemplateStatus | None:
        return EVENT_STATUS.get(self.event)


def parse_status_update(waba_id: Any, value: Any, time: Any = None) -> TemplateStatusUpdate | None:
    """The change's ``value`` (``waba_id`` and ``time`` from its entry); None when it names no template."""
    if not isinstance(value, dict):
        return None
    language = normalize_language(value.get("message_template_language"))
    name = _name(value.get("message_template_name"), language)
    if name is None:
        return None
    raw = str(value.get("event") or "")
    reason = value.get("reason")
    return TemplateStatusUpdate(
        waba_id=str(waba_id or "")[:ID_MAX], template_id=str(value.get("message_template_id") or "")[:ID_MAX],
        name=name, language=language, event=TemplateEvent(raw), raw_event=raw,
        reason=str(reason)[:64] if reason not in (None, "") else None,
        category=(str(value["message_template_category"]).upper()[:CATEGORY_MAX]
                  if value.get("message_template_category") else None),
        time=_epoch(time))


def _epoch(value: Any) -> datetime | None:
    try:
        return datetime.fromtimestamp(int(value), UTC).replace(tzinfo=None)
    except (TypeError, ValueError, OverflowError, OSError):
        return None


# --- the client -------------------------------------------------------------------------------

class TemplateClientError(Exception):
    """The Graph API refused or failed. The message never holds the access token."""

    def __init__(self, message: str, status: int | None = None, code: int | None = None, retryable: bool = False):
        super().__init__(message)
        self.status, self.code, self.retryable = status, code, retryable


@dataclass
class TemplateList:
    templates: list[RemoteTemplate] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    pages: int = 0
    calls: int = 0  # HTTP requests, retries included


class TemplatesClient:
    """Reads a WhatsApp Business Account's message templates, every page."""

    def __init__(self, base_url: str, token: str, waba_id: str, *, timeout: tuple[float, float] = (3.05, 30.0),
                 max_attempts: int = 4, backoff: float = 1.0, page_size: int = PAGE_SIZE,
                 sleep: Callable[[float], None] = time.sleep, session: requests.Session | None = None):
        if not waba_id:
            raise TemplateClientError("WHATSAPP_BUSINESS_ACCOUNT_ID is not set")
        if not token:
            raise TemplateClientError("WHATSAPP_ACCESS_TOKEN is not set")
        self.url = f"{base_url.rstrip('/')}/{waba_id}/message_templates"
        self.token, self.waba_id = token, waba_id
        self.timeout, self.max_attempts, self.backoff = timeout, max_attempts, backoff
        self.page_size, self.sleep = page_size, sleep
        self.session = session or requests.Session()

    @classmethod
    def from_settings(cls, settings, **kwargs) -> TemplatesClient:
        base = f"{settings.whatsapp_api_url}/{settings.whatsapp_api_version}"
        kwargs.setdefault("timeout", (settings.whatsapp_connect_timeout, max(settings.whatsapp_read_timeout, 10.0)))
        return cls(base, settings.whatsapp_access_token, settings.whatsapp_business_account_id, **kwargs)

    def list_templates(self) -> TemplateList:
        """Every template of the account. Raises TemplateClientError when a page cannot be read."""
        out, after, seen = TemplateList(), None, set()
        while out.pages < MAX_PAGES:
            params = {"fields": FIELDS, "limit": str(self.page_size)}
            if after:
                params["after"] = after
            data = self._get(params, out)
            out.pages += 1
            for i, item in enumerate(_list(data.get("data"))):
                template = parse_template(item)
                if template is None:
                    out.warnings.append(f"page {out.pages} item {i}: a template without name or language")
                else:
                    out.templates.append(template)
            paging = _dict(data.get("paging"))
            after = _dict(paging.get("cursors")).get("after")
            if not paging.get("next") or not isinstance(after, str) or not after or after in seen:
                return out
            seen.add(after)
        out.warnings.append(f"stopped after {MAX_PAGES} pages")
        return out

    def _get(self, params: dict, out: TemplateList) -> dict:
        headers = {"Authorization": f"Bearer {self.token}"}
        last = TemplateClientError("message_templates: no attempt made")
        for attempt in range(1, max(1, self.max_attempts) + 1):
            retry_after = None
            out.calls += 1
            try:
                response = self.session.get(self.url, params=params, headers=headers, timeout=self.timeout)
            except requests.Timeout:
                last = TemplateClientError("message_templates: timed out", retryable=True)
            except requests.ConnectionError:
                last = TemplateClientError("message_templates: connection failed", retryable=True)
            else:
                try:
                    data = response.json()
                except ValueError:
                    data = None
                if response.status_code == 200 and isinstance(data, dict):
                    return data
                last = self._error(response.status_code, data)
                retry_after = http.retry_after(response)
            if not last.retryable or attempt == self.max_attempts:
                break
            delay = retry_after if retry_after is not None else self.backoff * 2 ** (attempt - 1)
            delay = min(60.0, delay) * (1 + random.random() * 0.25)
            log.warning("message_templates failed (%s), retrying in %.1f s", last, delay,
                        extra={"event": "templates.api_retry", "attempt": attempt})
            self.sleep(delay)
        raise last

    def _error(self, status: int, data: Any) -> TemplateClientError:
        error = _dict(_dict(data).get("error"))
        try:
            code = int(error["code"]) if error.get("code") is not None else None
        except (TypeError, ValueError):
            code = None
        message = str(error.get("message") or ("the answer is not a JSON object" if status == 200 else ""))[:300]
        message = message.replace(self.token, "***") if self.token else message
        retryable = status == 429 or status >= 500 or code in RETRYABLE_CODES
        text = f"message_templates: HTTP {status}" + (f", error {code}" if code is not None else "")
        return TemplateClientError(f"{text}: {message}" if message else text, status, code, retryable)


def _dict(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list:
    return value if isinstance(value, list) else []

