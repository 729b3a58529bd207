"""Messages set aside: inbound messages whose turn failed repeatedly, for operators to see and retry."""

from __future__ import annotations

from flask import jsonify
from sqlalchemy import select

from crm.app.api import ApiError, arg_int, bp
from crm.base.enums import Direction, MessageStatus
from crm.base.extensions import db
from crm.base.models import Message
from crm.base.operators import audit
from crm.replies.contact import retry_failed


@bp.get("/failed-messages")
def list_failed_messages():
    """Inbound messages set aside, newest first (cursor pages)."""
    limit = arg_int("limit", 50, 1, 200)
    cursor = arg_int("cursor", 0, 0, 2**62)
    stmt = select(Message).where(Message.direction == Direction.IN, Message.status == MessageStatus.FAILED)
    if cursor:
        stmt = stmt.where(Message.id < cursor)
    rows = db.session.execute(stmt.order_by(Message.id.desc()).limit(limit + 1)).scalars().all()
    page = rows[:limit]
    return jsonify(items=[{**m.to_dict(), "contact_id": m.contact_id} for m in page],
                   next_cursor=page[-1].id if len(rows) > limit else None)


@bp.post("/messages/<int:message_id>/retry")
def retry_failed_message(message_id: int):
    """Put a set-aside message back at its place in the contact's inbox; the bot answers it."""
    contact_id = db.session.execute(select(Message.contact_id).where(Message.id == message_id)).scalar_one_or_none()
    if contact_id is None or not retry_failed(message_id):
        raise ApiError(404, "no inbound message with that id was set aside")
    audit("retry", contact_id, detail={"message_id": message_id})
    db.session.commit()
    return jsonify(retried=message_id), 202
