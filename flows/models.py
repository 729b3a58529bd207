"""Flows as stored documents, and each contact's flow sessions."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, Boolean, DateTime, ForeignKey, Index, Integer, String, Text, text
from sqlalchemy.orm import Mapped, mapped_column

from crm.base.enums import OPEN_STATUSES, SessionStatus
from crm.base.extensions import db
from crm.base.models import BigId, fixed, sql_list, utcnow

# A contact's open session, found by the reply path on every turn (see crm.base.models WAITING).
OPEN_SQL = f"status IN ({sql_list(OPEN_STATUSES)})"


class Flow(db.Model):
    __tablename__ = "flows"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    version: Mapped[int] = mapped_column(Integer, default=1)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    document: Mapped[dict] = mapped_column(JSON)  # validated, normalised document
    source: Mapped[str] = mapped_column(Text)  # the file as imported, exported unchanged
    source_format: Mapped[str] = mapped_column(String(8))  # "yaml" | "json"
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)




class FlowSession(db.Model):
    """One run of a flow for one contact. At most one is open per contact.

    ``version`` is an optimistic lock: the flow job and the idle-session cleanup
    both write sessions, and whichever commits second notices and redoes its work.
    """

    __tablename__ = "flow_sessions"
    __table_args__ = (
        Index("ix_flow_sessions_open", "status", "expires_at"),
        Index("ix_flow_sessions_contact", "contact_id", "status"),
        Index("ix_flow_sessions_open_contact", "contact_id", "id", sqlite_where=text(OPEN_SQL),
              postgresql_where=text(OPEN_SQL)),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    contact_id: Mapped[int] = mapped_column(ForeignKey("contacts.id"))
    flow_name: Mapped[str] = mapped_column(String(64))
    flow_version: Mapped[int] = mapped_column(Integer)
    step_id: Mapped[str | None] = mapped_column(String(64))
    status: Mapped[SessionStatus] = mapped_column(String(16))
    state: Mapped[dict] = mapped_column(JSON, default=dict)  # engine state (variables, waiting, ...)
    started_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    last_activity_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    expires_at: Mapped[datetime | None] = mapped_column(DateTime)  # None: never (handover)
    ended_at: Mapped[datetime | None] = mapped_column(DateTime)
    end_reason: Mapped[str | None] = mapped_column(String(32))
    handover_claimed_by: Mapped[str | None] = mapped_column(String(64))
    version: Mapped[int] = mapped_column(Integer, nullable=False, default=1)

    __mapper_args__ = {"version_id_col": version}

    def to_dict(self, now: datetime | None = None) -> dict:
        now = now or utcnow()
        return {
            "id": self.id,
            "contact_id": self.contact_id,
            "flow": self.flow_name,
            "flow_version": self.flow_version,
            "step": self.step_id,
            "status": self.status,
            "variables": (self.state or {}).get("vars", {}),
            "started_at": self.started_at.isoformat() + "Z",
            "last_activity_at": self.last_activity_at.isoformat() + "Z",
            "idle_seconds": round((now - self.last_activity_at).total_seconds(), 1),
            "expires_at": self.expires_at.isoformat() + "Z" if self.expires_at else None,
            "end_reason": self.end_reason,
        }


# The condition of ix_flow_sessions_open_contact, as the queries write it.
OPEN = FlowSession.__table__.c.status.in_([fixed(status) for status in OPEN_STATUSES])
