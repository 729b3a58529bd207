"""``GET /api/templates``: the business account's message templates as last synced."""

from __future__ import annotations

from flask import jsonify, request
from sqlalchemy import func, select

from crm.app.api import ApiError, bp, stamp
from crm.base.extensions import contains_pattern, db
from crm.base.templates import MessageTemplate
from integrations.whatsapp.templates import TemplateStatus


@bp.get("/templates")
def list_templates():
    """Every stored template (``?status=APPROVED`` for the sendable ones, ``?q=`` name contains)."""
    stmt = select(MessageTemplate)
    status = (request.args.get("status") or "").strip().upper()
    if status:
        if status not in TemplateStatus.__members__:
            raise ApiError(400, f"query parameter 'status' must be one of {', '.join(TemplateStatus)}")
        stmt = stmt.where(MessageTemplate.status == status)
    q = (request.args.get("q") or "").strip()
    if q:
        stmt = stmt.where(MessageTemplate.name.like(contains_pattern(q), escape="\\"))
    rows = db.session.execute(stmt.order_by(MessageTemplate.name, MessageTemplate.language)).scalars().all()
    synced = db.session.execute(select(func.max(MessageTemplate.synced_at))).scalar_one()
    return jsonify(items=[t.to_dict() for t in rows], synced_at=stamp(synced))
