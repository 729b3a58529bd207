"""The WhatsApp Business Account's message templates, kept in the database.

Filled by ``sync_templates`` (``flask --app wsgi templates sync`` and the hourly
``crm-templates-sync`` job on ``low``) from the Graph API, and kept current between syncs by the
``message_template_status_update`` webhook (``apply_status_update``). Sends of templates are checked
against it: ``require_approved`` refuses an unknown or unapproved template, or a send whose
parameters do not fit, with a message that says what to do.

A row the webhook created for a template the sync has not seen yet has no ``components``: its
status is known, its parameters are not (they are not checked until the next sync, which the
webhook enqueues).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import JSON, DateTime, Index, Integer, String, case, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, mapped_column

from crm.base import keys
from crm.base.extensions import db, get_queue, get_redis, get_settings
from crm.base.models import BigId, utcnow
from integrations.whatsapp.templates import (
    TemplateEvent,
    TemplateParams,
    TemplatesClient,
    TemplateStatus,
    TemplateStatusUpdate,
    check_send_components,
    count_parameters,
    normalize_language,
)

log = logging.getLogger(__name__)

SYNC_JOB = "crm.base.templates.sync_job"
SYNC_COMMAND = "flask --app wsgi templates sync"
DEFAULT_LANGUAGE = "en_US"
SYNC_TIMEOUT = 240  # seconds; below keys.TEMPLATES_SYNC_TTL


class MessageTemplate(db.Model):
    __tablename__ = "message_templates"
    __table_args__ = (
        db.UniqueConstraint("name", "language", name="uq_message_templates_name_language"),
        Index("ix_message_templates_status", "status"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    waba_id: Mapped[str | None] = mapped_column(String(32))
    remote_id: Mapped[str | None] = mapped_column(String(32), index=True)  # Meta's template id
    name: Mapped[str] = mapped_column(String(512))
    language: Mapped[str] = mapped_column(String(16))
    category: Mapped[str | None] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(24))  # a TemplateStatus value
    status_reason: Mapped[str | None] = mapped_column(String(64))  # the webhook's reason (REJECTED ...)
    status_at: Mapped[datetime | None] = mapped_column(DateTime)  # when Meta set the status we hold
    components: Mapped[list | None] = mapped_column(JSON)  # None: known from a webhook only
    parameter_format: Mapped[str | None] = mapped_column(String(16))
    header_params: Mapped[int | None] = mapped_column(Integer)
    body_params: Mapped[int | None] = mapped_column(Integer)
    button_params: Mapped[int | None] = mapped_column(Integer)
    synced_at: Mapped[datetime | None] = mapped_column(DateTime)
    updated_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)

    @property
    def approved(self) -> bool:
        return self.status == TemplateStatus.APPROVED

    @property
    def params(self) -> TemplateParams | None:
        if self.components is None:
            return None
        return count_parameters(self.components, self.parameter_format)

    def label(self) -> str:
        return f"template {self.name!r} ({self.language})"

    def to_dict(self) -> dict:
        stamp = lambda d: d.isoformat() + "Z" if d else None  # noqa: E731
        params = self.params
        return {
            "name": self.name, "language": self.language, "category": self.category, "status": self.status,
            "status_reason": self.status_reason, "approved": self.approved,
            "parameter_format": self.parameter_format,
            "parameters": None if params is None else {
                **params.counts(), "header_format": params.header_format,
                "names": list(params.header_names + params.body_names),
                "buttons_needing_values": [i for i, _ in params.buttons]},
            "components": self.components, "remote_id": self.remote_id,
            "synced_at": stamp(self.synced_at), "updated_at": stamp(self.updated_at),
        }


def _set_components(row: MessageTemplate, components: list, params: TemplateParams) -> None:
    row.components, row.parameter_format = components, params.parameter_format
    row.header_params, row.body_params, row.button_params = params.header, params.body, len(params.buttons)


# --- lookups ----------------------------------------------------------------------------------

def _language_order():
    # an unnamed language prefers en_US, then the alphabet
    return (case((MessageTemplate.language == DEFAULT_LANGUAGE, 0), else_=1), MessageTemplate.language)


def approved_template(name: str, language: str | None = None) -> MessageTemplate | None:
    """The approved template of that name (and language; without one: en_US, else the first)."""
    stmt = select(MessageTemplate).where(MessageTemplate.name == name,
                                         MessageTemplate.status == TemplateStatus.APPROVED.value)
    if language:
        stmt = stmt.where(MessageTemplate.language == normalize_language(language))
    return db.session.execute(stmt.order_by(*_language_order()).limit(1)).scalar_one_or_none()


def approved_templates() -> list[MessageTemplate]:
    """Every approved template, by name and language (the inbox's template picker)."""
    return list(db.session.execute(
        select(MessageTemplate).where(MessageTemplate.status == TemplateStatus.APPROVED.value)
        .order_by(MessageTemplate.name, MessageTemplate.language)).scalars())


def store_is_empty() -> bool:
    return db.session.execute(select(func.count()).select_from(MessageTemplate)).scalar_one() == 0


class TemplateRefused(ValueError):
    """A template send or flow names a template that may not be sent (the message says why)."""

    def __init__(self, message: str, not_synced: bool = False):
        super().__init__(message)
        self.not_synced = not_synced  # nothing synced yet: the store cannot tell


def require_approved(name: str, language: str | None = None, components=None,
                     check_parameters: bool = True) -> MessageTemplate:
    """The approved template, or TemplateRefused saying why it cannot be sent.

    ``components`` is the send's (Meta's send format); its parameters are counted against the
    template's when ``check_parameters`` and the template's components are known.
    """
    template = approved_template(name, language)
    if template is None:
        raise TemplateRefused(_why_not(name, normalize_language(language) if language else None),
                              not_synced=store_is_empty())
    params = template.params
    if check_parameters and params is not None:
        problems = check_send_components(params, components)
        if problems:
            raise TemplateRefused(f"{template.label()}: {'; '.join(problems)}")
    return template


def _why_not(name: str, language: str | None) -> str:
    shown = f"template {name!r} ({language or 'any language'})"
    if store_is_empty():
        return (f"unknown {shown}: no templates are synced yet; set WHATSAPP_BUSINESS_ACCOUNT_ID and run "
                f"`{SYNC_COMMAND}`")
    rows = db.session.execute(select(MessageTemplate).where(MessageTemplate.name == name)
                              .order_by(*_language_order())).scalars().all()
    same = [r for r in rows if language is None or r.language == language]
    if same:
        row = same[0]
        reason = f" ({row.status_reason})" if row.status_reason and row.status_reason != "NONE" else ""
        return f"{row.label()} is not approved: status {row.status}{reason}"
    if rows:
        approved = [r.language for r in rows if r.approved]
        return (f"unknown {shown}: it exists in {', '.join(r.language for r in rows)}"
                + (f" (approved: {', '.join(approved)})" if approved else "")
                + f"; run `{SYNC_COMMAND}` if the translation is new")
    return f"unknown {shown}; run `{SYNC_COMMAND}` if it was created recently"


# --- sync -------------------------------------------------------------------------------------

@dataclass
class SyncResult:
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    deleted: int = 0
    pages: int = 0
    calls: int = 0

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def sync_templates(client: TemplatesClient) -> SyncResult:
    """Read every template from the Graph API and upsert them; those no longer listed become DELETED.

    All pages are read before the database is touched: a failed page changes nothing.
    """
    listing = client.list_templates()
    for warning in listing.warnings:
        log.warning("templates sync: %s", warning, extra={"event": "templates.unexpected_shape"})
    for attempt in (1, 2):  # a webhook may insert a row of the same name meanwhile: then once more
        try:
            result = _upsert(client.waba_id, listing.templates)
            break
        except IntegrityError:
            db.session.rollback()
            if attempt == 2:
                raise
    result.pages, result.calls = listing.pages, listing.calls
    log.info("templates synced: %s", result.as_dict(), extra={"event": "templates.synced"})
    return result


def _upsert(waba_id: str, templates) -> SyncResult:
    now, result = utcnow(), SyncResult()
    existing = {(r.name, r.language): r for r in db.session.execute(select(MessageTemplate)).scalars()}
    seen = set()
    for t in templates:
        key = (t.name, t.language)
        seen.add(key)
        row = existing.get(key)
        if row is None:
            row = MessageTemplate(name=t.name, language=t.language, status=t.status.value, status_at=now,
                                  updated_at=now)
            db.session.add(row)
            existing[key] = row
            result.created += 1
            changed = True
        else:
            before = (row.waba_id, row.remote_id, row.category, row.status, row.components, row.parameter_format)
            changed = before != (waba_id, t.id or None, t.category, t.status.value, t.components,
                                 t.params.parameter_format)
            result.updated += changed
            result.unchanged += not changed
        if row.status != t.status.value:
            row.status, row.status_reason, row.status_at = t.status.value, None, now
        row.waba_id, row.remote_id, row.category = waba_id, t.id or None, t.category
        _set_components(row, t.components, t.params)
        row.synced_at = now
        if changed:
            row.updated_at = now
    for key, row in existing.items():
        if key not in seen and row.status != TemplateStatus.DELETED:
            row.status, row.status_reason, row.status_at, row.updated_at = (
                TemplateStatus.DELETED.value, "not listed by the API", now, now)
            result.deleted += 1
    db.session.commit()
    return result


class _SyncLock:
    def __enter__(self) -> bool:
        self.held = bool(get_redis().set(keys.TEMPLATES_SYNC_LOCK, "1", nx=True, ex=keys.TEMPLATES_SYNC_TTL))
        return self.held

    def __exit__(self, *_exc) -> None:
        if self.held:
            get_redis().delete(keys.TEMPLATES_SYNC_LOCK)


NOT_CONFIGURED = {"skipped": "WHATSAPP_BUSINESS_ACCOUNT_ID is not set"}


def sync_job() -> dict:
    """The scheduled sync (``crm-templates-sync`` on ``low``); skips quietly without an account id."""
    settings = get_settings()
    if not settings.whatsapp_business_account_id:
        log.info("templates sync skipped: WHATSAPP_BUSINESS_ACCOUNT_ID is not set",
                 extra={"event": "templates.not_configured"})
        return NOT_CONFIGURED
    get_redis().delete(keys.TEMPLATES_SYNC_QUEUED)
    with _SyncLock() as held:
        if not held:
            return {"skipped": "another templates sync is running"}
        return sync_templates(TemplatesClient.from_settings(settings)).as_dict()


def enqueue_sync() -> bool:
    """Ask the ``low`` worker for a sync soon (at most one waiting); False when not configured."""
    if not get_settings().whatsapp_business_account_id:
        return False
    if get_redis().set(keys.TEMPLATES_SYNC_QUEUED, "1", nx=True, ex=keys.TEMPLATES_SYNC_TTL):
        get_queue(keys.LOW).enqueue(SYNC_JOB, result_ttl=0, failure_ttl=keys.FAILURE_TTL, job_timeout=SYNC_TIMEOUT,
                                    description="templates sync")
    return True


# --- webhook ----------------------------------------------------------------------------------

def apply_status_update(update: TemplateStatusUpdate, when: datetime | None = None) -> bool:
    """Apply one status webhook (the caller commits). True when a sync should follow.

    An event older than the status we hold (webhooks can arrive out of order, or after a
    sync that already saw the change) is ignored.
    """
    when = update.time or when or utcnow()
    row = None
    if update.template_id:
        row = db.session.execute(select(MessageTemplate).where(MessageTemplate.remote_id == update.template_id)
                                 ).scalars().first()
    if row is None:
        row = db.session.execute(select(MessageTemplate).where(
            MessageTemplate.name == update.name, MessageTemplate.language == update.language)).scalar_one_or_none()
    follow_up = update.status is None and update.event is not TemplateEvent.FLAGGED
    if row is None:
        row = MessageTemplate(name=update.name, language=update.language,
                              status=(update.status or TemplateStatus.UNKNOWN).value, updated_at=utcnow())
        db.session.add(row)
        follow_up = True  # its components (and so its parameters) come with the sync
    elif row.status_at is not None and when < row.status_at:
        log.info("%s: %s event from before the status we hold ignored", row.label(), update.raw_event,
                 extra={"event": "templates.stale_event"})
        return follow_up
    row.waba_id = update.waba_id or row.waba_id
    row.remote_id = update.template_id or row.remote_id
    row.category = update.category or row.category
    if update.status is not None:
        row.status, row.status_reason = update.status.value, update.reason
    row.status_at, row.updated_at = when, utcnow()
    log.info("%s: %s", row.label(), update.raw_event, extra={"event": "templates.status_update"})
    return follow_up
