"""Flow sessions: find the open one, and end one. Every ending goes through ``end_values``.

A contact has at most one open session (``active`` or ``handover``). Turns, the idle
cleanup, an operator's reset, takeover and resolve, and a handover nobody answered all end
sessions the same way: status ``ended`` (``expired`` for idle), a reason, ``ended_at``, no
``expires_at``, and the optimistic ``version`` bumped, so that whoever wrote second notices
(StaleDataError) and redoes its work on fresh data.
"""

from __future__ import annotations

from collections import namedtuple
from datetime import datetime, timedelta

from sqlalchemy import bindparam, select
from sqlalchemy.orm.exc import StaleDataError

from crm.base import hot_sql
from crm.base.enums import OPEN_STATUSES, EndReason, SessionStatus
from crm.base.extensions import db, get_settings
from crm.base.models import utcnow
from flows import engine
from flows.document import DEFAULT_EXPIRED
from flows.models import OPEN, FlowSession

sessions = FlowSession.__table__

# The reply path runs prebuilt table statements: no ORM identity map to flush or reload.
# The columns of an open session row; ``load_contact`` (crm.replies.turns) reads them with the
# contact, in the same statement, as s_<name>.
SESSION_COLUMNS = ("id", "flow_name", "step_id", "status", "state", "flow_version", "version", "last_activity_at")
OpenSession = namedtuple("OpenSession", SESSION_COLUMNS)


def _open_of_contact(*columns):
    """SELECT ``columns`` of the open session of the contact bound as ``b_contact`` (ix_flow_sessions_open_contact)."""
    return (select(*columns).where(sessions.c.contact_id == bindparam("b_contact"), OPEN)
            .order_by(sessions.c.id.desc()).limit(1))


_OPEN_SESSION = _open_of_contact(*(sessions.c[name] for name in SESSION_COLUMNS))
# The id of the contact's open session, for a statement that reads ``contacts``.
OPEN_ID = _open_of_contact(sessions.c.id).scalar_subquery()
SESSION_NEW = sessions.insert().returning(sessions.c.id)
SESSION_WRITE = (sessions.update().where(sessions.c.id == bindparam("b_id"),
                                         sessions.c.version == bindparam("b_version"))
                 .values(flow_name=bindparam("b_flow"), flow_version=bindparam("b_flow_version"),
                         step_id=bindparam("b_step"), state=bindparam("b_state"),
                         last_activity_at=bindparam("b_now"), status=bindparam("b_status"),
                         expires_at=bindparam("b_expires"), ended_at=bindparam("b_ended"),
                         end_reason=bindparam("b_reason"), version=sessions.c.version + 1))


def end_values(reason: EndReason | str, now: datetime, status: SessionStatus = SessionStatus.ENDED) -> dict:
    """The columns every ending writes (the caller adds its WHERE, with the version it read)."""
    return {"status": status, "end_reason": reason, "ended_at": now, "expires_at": None,
            "version": sessions.c.version + 1}


_END = (sessions.update().where(sessions.c.id == bindparam("b_id"), sessions.c.version == bindparam("b_version"))
        .values(status=bindparam("b_status"), end_reason=bindparam("b_reason"), ended_at=bindparam("b_now"),
                expires_at=None, version=sessions.c.version + 1))


def end_session(session, reason: EndReason | str, now: datetime | None = None,
                status: SessionStatus = SessionStatus.ENDED) -> None:
    """End an open session (a row or a FlowSession) in the open transaction.

    Optimistic: raises StaleDataError when it changed since it was read. A FlowSession
    object is expired so that it reads back what was written.
    """
    now = now or utcnow()
    done = hot_sql.execute(_END, {"b_id": session.id, "b_version": session.version, "b_status": status,
                                  "b_reason": reason, "b_now": now}).rowcount
    if done != 1:
        raise StaleDataError(f"flow session {session.id} changed meanwhile")
    if isinstance(session, FlowSession):
        db.session.expire(session)


def open_session(contact_id: int) -> FlowSession | None:
    """The contact's open session as an ORM object (operator API and pages)."""
    return db.session.execute(
        select(FlowSession).where(FlowSession.contact_id == contact_id, FlowSession.status.in_(OPEN_STATUSES))
        .order_by(FlowSession.id.desc()).limit(1)
    ).scalar_one_or_none()


def session_of_contact(contact) -> OpenSession | None:
    """The open session read with the contact (its s_* columns), or None."""
    if contact.s_id is None:
        return None
    return OpenSession(*(getattr(contact, f"s_{name}") for name in SESSION_COLUMNS))


def open_session_row(contact_id: int):
    """The contact's open session as a row (``SESSION_COLUMNS``) on its own; a turn reads it with
    the contact instead (``session_of_contact``)."""
    return hot_sql.execute(_OPEN_SESSION, {"b_contact": contact_id}).first()


def session_of(row) -> engine.Session:
    """The engine's view of an open session row (None: no session)."""
    if row is None:
        return engine.Session()
    return engine.Session.from_row(row.flow_name, row.step_id, row.status, row.state, row.flow_version)


def idle_minutes(library: engine.Library, flow_name: str) -> float:
    flow = library.flows.get(flow_name)
    if flow is not None and flow.settings.idle_minutes:
        return flow.settings.idle_minutes
    return get_settings().session_idle_minutes


def idle_deadline(library: engine.Library, flow_name: str, now: datetime) -> datetime:
    return now + timedelta(minutes=idle_minutes(library, flow_name))


def expiry_notice(library: engine.Library, flow_name: str) -> str | None:
    """What a user is told when their session in ``flow_name`` expires (None: nothing)."""
    flow = library.flows.get(flow_name)
    own = flow.expired_message if flow is not None else DEFAULT_EXPIRED
    text = get_settings().session_expired_message if own is DEFAULT_EXPIRED else own
    return text or None
