"""Contacts and messages: the CRM's record of every conversation."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    false,
    literal,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from crm.base.enums import PENDING, Direction, MessageStatus, Origin
from crm.base.extensions import db

# SQLite only auto-increments INTEGER PRIMARY KEY; PostgreSQL gets a BIGINT.
BigId = BigInteger().with_variant(Integer(), "sqlite")

SERVICE_WINDOW = timedelta(hours=24)


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def fixed(value: str):
    """A constant written into the SQL text, not bound as a parameter: the planner then sees it
    in every plan (PostgreSQL's generic plans of prepared statements included) and can use a
    partial index whose condition names it. SQLite's planner needs it too."""
    return literal(str(value), String(), literal_execute=True)


def sql_list(values) -> str:
    """Constants as an SQL list, for the condition of a partial index."""
    return ", ".join(f"'{value}'" for value in values)


# The reply path's two queues, each read by contact in id order: inbound messages waiting for
# an answer, outbound ones Meta has not accepted yet. Partial indexes hold only what waits, and
# the queries (WAITING and UNSENT below) repeat their conditions with fixed constants, so every
# plan uses them whatever the table statistics say. With the conditions bound as parameters
# and no statistics (a new database, or autovacuum off), PostgreSQL walked the primary key
# backwards for max(id): ~90 rows read per lookup, growing with the table.
WAITING_SQL = f"direction = '{Direction.IN}' AND processed_at IS NULL"
UNSENT_SQL = f"direction = '{Direction.OUT}' AND status IN ({sql_list(PENDING)})"


class Contact(db.Model):
    __tablename__ = "contacts"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    # A contact is known by its phone number, Meta's business-scoped user id (BSUID), or both;
    # a user with a username may never show us a phone number. Matched user id first.
    wa_id: Mapped[str | None] = mapped_column(String(32), unique=True)
    user_id: Mapped[str | None] = mapped_column(String(64), unique=True)
    profile_name: Mapped[str | None] = mapped_column(String(256))
    custom_fields: Mapped[dict] = mapped_column(JSON, default=dict)
    opted_out: Mapped[bool] = mapped_column(Boolean, default=False)
    blocked: Mapped[bool] = mapped_column(Boolean, default=False)
    # A contact of the flow simulator (/simulator): answered by the real runtime, but its messages
    # go to a sink instead of the Graph API, and it is left out of stats, handovers and lists.
    is_test: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false(), index=True)
    first_seen_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    last_seen_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    last_inbound_at: Mapped[datetime | None] = mapped_column(DateTime)

    messages = relationship("Message", back_populates="contact", lazy="dynamic")

    def window_open(self, now: datetime | None = None) -> bool:
        return window_open(self.last_inbound_at, now or utcnow())


def window_open(last_inbound_at: datetime | None, now: datetime) -> bool:
    """Whether the 24-hour customer service window allows free-form messages."""
    return last_inbound_at is not None and now - last_inbound_at < SERVICE_WINDOW


def contact_context(contact) -> dict:
    """What flows see as ``contact``, from a Contact or a row with the same columns."""
    return {
        "id": contact.id,
        "wa_id": contact.wa_id,
        "user_id": getattr(contact, "user_id", None),
        "name": contact.profile_name or "",
        "fields": dict(contact.custom_fields or {}),
        "opted_out": contact.opted_out,
    }


class Message(db.Model):
    __tablename__ = "messages"
    __table_args__ = (
        # Exactly once: Meta may deliver the same webhook several times.
        db.UniqueConstraint("phone_number_id", "wa_message_id", name="uq_messages_pnid_wamid"),
        Index("ix_messages_waiting", "contact_id", "id", sqlite_where=text(WAITING_SQL),
              postgresql_where=text(WAITING_SQL)),
        Index("ix_messages_unsent", "contact_id", "id", sqlite_where=text(UNSENT_SQL),
              postgresql_where=text(UNSENT_SQL)),
        Index("ix_messages_created", "created_at"),
        Index("ix_messages_pending", "direction", "status", "processed_at"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    contact_id: Mapped[int] = mapped_column(ForeignKey("contacts.id"), index=True)
    direction: Mapped[Direction] = mapped_column(String(3))
    type: Mapped[str] = mapped_column(String(32))
    text: Mapped[str | None] = mapped_column(Text)  # searchable summary (body, caption, button title)
    payload: Mapped[dict] = mapped_column(JSON)  # full message object as Meta sent it / as we send it
    phone_number_id: Mapped[str] = mapped_column(String(32))
    wa_message_id: Mapped[str | None] = mapped_column(String(128))
    context_wa_id: Mapped[str | None] = mapped_column(String(128))  # message a reply refers to
    callback_id: Mapped[str | None] = mapped_column(String(36), unique=True)  # biz_opaque_callback_data
    status: Mapped[MessageStatus] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    wa_timestamp: Mapped[datetime | None] = mapped_column(DateTime)
    received_at: Mapped[float | None] = mapped_column(db.Float)  # epoch seconds the webhook arrived
    # the first reply of a turn: ms from its inbound message's webhook to this send accepted (on
    # the inbound row itself before 2026-12-07; crm/app/api/stats.py reads either)
    reply_ms: Mapped[float | None] = mapped_column(db.Float)
    processed_at: Mapped[datetime | None] = mapped_column(DateTime)  # inbound: handled by the flow job
    flow_session_id: Mapped[int | None] = mapped_column(BigId)
    origin: Mapped[Origin | None] = mapped_column(String(16))  # outbound: who wrote it
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(DateTime)
    last_attempt_at: Mapped[datetime | None] = mapped_column(DateTime)
    sent_at: Mapped[datetime | None] = mapped_column(DateTime)
    delivered_at: Mapped[datetime | None] = mapped_column(DateTime)
    read_at: Mapped[datetime | None] = mapped_column(DateTime)
    failed_at: Mapped[datetime | None] = mapped_column(DateTime)
    deleted_at: Mapped[datetime | None] = mapped_column(DateTime)
    error_code: Mapped[int | None] = mapped_column(Integer)
    error_title: Mapped[str | None] = mapped_column(String(512))
    error_details: Mapped[str | None] = mapped_column(Text)

    contact = relationship("Contact", back_populates="messages")

    @staticmethod
    def new_callback_id() -> str:
        return str(uuid.uuid4())

    def to_dict(self) -> dict:
        stamp = lambda d: d.isoformat() + "Z" if d else None
        return {
            "id": self.id,
            "direction": self.direction,
            "type": self.type,
            "text": self.text,
            "payload": self.payload,
            "wa_message_id": self.wa_message_id,
            "status": self.status,
            "created_at": stamp(self.created_at),
            "status_history": {
                k: stamp(getattr(self, f"{k}_at"))
                for k in ("sent", "delivered", "read", "failed", "deleted")
                if getattr(self, f"{k}_at")
            },
            "attempts": self.attempts,
            "error_code": self.error_code,
            "error_title": self.error_title,
            "error_details": self.error_details,
        }


_messages = Message.__table__
# The conditions of ix_messages_waiting and ix_messages_unsent, as the queries write them.
WAITING = (_messages.c.direction == fixed(Direction.IN), _messages.c.processed_at.is_(None))
UNSENT = (_messages.c.direction == fixed(Direction.OUT), _messages.c.status.in_([fixed(s) for s in PENDING]))
