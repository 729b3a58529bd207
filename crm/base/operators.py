"""Operators (named people with a role), their personal API tokens, and the audit trail.

Passwords are hashed with werkzeug.security (scrypt); personal API tokens are random
256-bit strings stored as their SHA-256 (they are not guessable, so a slow hash adds
nothing); the token itself is shown once, when created.

Every operator action (send, claim, take over, resolve, field change, block, session
reset, flow start, flow upload ...) writes an ``AuditEvent`` in the same transaction as
the change itself, and a log line naming the operator.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import re
import secrets
from dataclasses import dataclass
from datetime import datetime

from flask import g, has_request_context
from sqlalchemy import JSON, Boolean, DateTime, ForeignKey, Index, String, select
from sqlalchemy.orm import Mapped, mapped_column
from werkzeug.security import check_password_hash, generate_password_hash

from crm.base.extensions import db
from crm.base.models import BigId, Contact, utcnow

log = logging.getLogger(__name__)

ROLES = ("admin", "agent")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._-]{0,63}$")
PASSWORD_MIN, PASSWORD_MAX = 10, 512
TOKEN_PREFIX = "crm_"

# The inbox lists "recent" conversations by the contact's last message time.
Index("ix_contacts_last_seen", Contact.__table__.c.last_seen_at)


class Operator(db.Model):
    __tablename__ = "operators"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(16))  # admin | agent
    password_hash: Mapped[str] = mapped_column(String(256))
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    last_login_at: Mapped[datetime | None] = mapped_column(DateTime)

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    def set_password(self, password: str) -> None:
        check_password(password)
        self.password_hash = generate_password_hash(password)

    def password_matches(self, password: str) -> bool:
        return check_password_hash(self.password_hash, password)


class OperatorToken(db.Model):
    """A personal API token for ``/api`` (``Authorization: Bearer crm_...``)."""

    __tablename__ = "operator_tokens"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    operator_id: Mapped[int] = mapped_column(ForeignKey("operators.id"), index=True)
    label: Mapped[str] = mapped_column(String(64))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))  # shown to tell tokens apart
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime)


class AuditEvent(db.Model):
    """Who did what, when. Names are stored as written then: renaming nobody rewrites history."""

    __tablename__ = "audit_events"
    __table_args__ = (Index("ix_audit_events_contact", "contact_id", "id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    at: Mapped[datetime] = mapped_column(DateTime, default=utcnow, index=True)
    operator: Mapped[str] = mapped_column(String(64))
    operator_id: Mapped[int | None] = mapped_column(BigId)
    via: Mapped[str] = mapped_column(String(8))  # web | api | cli
    action: Mapped[str] = mapped_column(String(32))
    contact_id: Mapped[int | None] = mapped_column(BigId)
    target: Mapped[str | None] = mapped_column(String(128))
    detail: Mapped[dict | None] = mapped_column(JSON)


class OperatorRead(db.Model):
    """The newest message of a conversation an operator has seen (unread counts)."""

    __tablename__ = "operator_reads"

    operator_id: Mapped[int] = mapped_column(ForeignKey("operators.id"), primary_key=True)
    contact_id: Mapped[int] = mapped_column(ForeignKey("contacts.id"), primary_key=True)
    message_id: Mapped[int] = mapped_column(BigId)
    read_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


# -- who is acting ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Actor:
    name: str
    id: int | None  # None: a token from OPERATOR_API_TOKENS, or the command line
    via: str  # web | api | cli
    role: str = "admin"

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


CLI_ACTOR = Actor("cli", None, "cli")


def current_actor() -> Actor:
    """The operator of the current request (set by the API or the inbox), else the command line."""
    if has_request_context() and g.get("actor") is not None:
        return g.actor
    return CLI_ACTOR


def audit(action: str, contact_id: int | None = None, target: str | None = None, detail: dict | None = None,
          actor: Actor | None = None) -> AuditEvent:
    """Record an action in the caller's transaction (it commits with the change) and log it."""
    actor = actor or current_actor()
    event = AuditEvent(at=utcnow(), operator=actor.name, operator_id=actor.id, via=actor.via, action=action,
                       contact_id=contact_id, target=target, detail=detail or None)
    db.session.add(event)
    log.info("%s %s%s", actor.name, action, f" {target}" if target else "",
             extra={"event": f"operator.{action}", "operator": actor.name, "contact_id": contact_id})
    return event


# -- accounts -----------------------------------------------------------------------------------
class AccountError(ValueError):
    """A name, role or password we cannot accept (the message says why)."""


def check_name(name: str) -> str:
    name = (name or "").strip()
    if not NAME_RE.match(name):
        raise AccountError("a name is 1-64 letters, digits, spaces, dots, dashes or underscores, "
                           "starting with a letter or digit")
    if re.fullmatch(r"operator-\d+", name, re.IGNORECASE):
        raise AccountError("names like 'operator-1' are kept for the tokens in OPERATOR_API_TOKENS")
    return name


def check_password(password: str) -> None:
    if not isinstance(password, str) or len(password) < PASSWORD_MIN:
        raise AccountError(f"a password needs at least {PASSWORD_MIN} characters")
    if len(password) > PASSWORD_MAX:
        raise AccountError(f"a password may have at most {PASSWORD_MAX} characters")


def find_operator(name: str) -> Operator | None:
    return db.session.execute(select(Operator).where(Operator.name == (name or "").strip())).scalar_one_or_none()


def create_operator(name: str, role: str, password: str) -> Operator:
    name = check_name(name)
    if role not in ROLES:
        raise AccountError(f"the role must be one of {', '.join(ROLES)}")
    if find_operator(name) is not None:
        raise AccountError(f"an operator named {name!r} exists already")
    operator = Operator(name=name, role=role, active=True, created_at=utcnow())
    operator.set_password(password)
    db.session.add(operator)
    return operator


def authenticate(name: str, password: str) -> Operator | None:
    """The active operator with this name and password, or None (same work either way)."""
    operator = find_operator(name) if name and len(name) <= 64 else None
    if operator is None or not operator.active:
        check_password_hash(_dummy_hash(), password or "")  # as slow as a real check: no name probing
        return None
    return operator if operator.password_matches(password or "") else None


@functools.cache
def _dummy_hash() -> str:
    return generate_password_hash(secrets.token_hex(16))


# -- personal API tokens ------------------------------------------------------------------------
def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def issue_token(operator: Operator, label: str) -> tuple[OperatorToken, str]:
    """A new token for ``operator``; returns the row and the token (shown once, never stored)."""
    label = (label or "").strip()
    if not label or len(label) > 64:
        raise AccountError("a token needs a label of 1-64 characters (what or where it is used)")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    row = OperatorToken(operator_id=operator.id, label=label, token_hash=hash_token(token),
                        prefix=token[: len(TOKEN_PREFIX) + 6], created_at=utcnow())
    db.session.add(row)
    return row, token


def personal_tokens_exist() -> bool:
    return db.session.execute(select(OperatorToken.id).where(OperatorToken.revoked_at.is_(None)).limit(1)
                              ).first() is not None


def operator_for_token(token: str) -> tuple[Operator, OperatorToken] | None:
    """The active operator holding this unrevoked personal token, or None."""
    if not token.startswith(TOKEN_PREFIX) or len(token) > 128:
        return None
    row = db.session.execute(
        select(OperatorToken, Operator).join(Operator, Operator.id == OperatorToken.operator_id)
        .where(OperatorToken.token_hash == hash_token(token), OperatorToken.revoked_at.is_(None),
               Operator.active.is_(True))).first()
    if row is None:
        return None
    operator_token, operator = row
    now = utcnow()
    if operator_token.last_used_at is None or (now - operator_token.last_used_at).total_seconds() > 60:
        operator_token.last_used_at = now  # written at most once a minute
        db.session.commit()
    return operator, operator_token
