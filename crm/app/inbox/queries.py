"""What the inbox pages read: the conversation list, a thread with its notes, unread counts.

Written for a large inbox (bench/inbox_bench.py: 10 000 contacts, 100 000 messages): the
list reads one page of contacts by ``last_seen_at`` (indexed), then the page's sessions,
last messages and unread counts with one grouped query each; a thread is one indexed range
of the contact's messages plus its sessions and audit events in that time span.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import and_, exists, func, or_, select

from crm.base.enums import OPEN_STATUSES, EndReason
from crm.base.extensions import contains_pattern, db, dialect_insert
from crm.base.models import Contact, Message, utcnow
from crm.base.operators import AuditEvent, Operator, OperatorRead
from flows.models import FlowSession

FILTERS = {"all": "All", "waiting": "Waiting", "mine": "Mine", "bot": "Bot", "opted_out": "Opted out",
           "blocked": "Blocked"}
PAGE, PAGE_MAX, THREAD = 50, 500, 500
NOTE_OVERLAP = timedelta(seconds=10)  # polls re-read this much of the past; the page drops repeats

contacts, messages, sessions = Contact.__table__, Message.__table__, FlowSession.__table__
audits, reads = AuditEvent.__table__, OperatorRead.__table__


@dataclass
class Conversation:
    id: int
    wa_id: str
    name: str
    opted_out: bool
    blocked: bool
    last_seen_at: datetime
    state: str = "idle"  # waiting | held | bot | idle
    holder: str | None = None
    waiting_since: datetime | None = None
    last_text: str | None = None
    last_direction: str | None = None
    last_at: datetime | None = None
    unread: int = 0


def _handover(claimed: bool | None = None, by: str | None = None):
    cond = [sessions.c.contact_id == contacts.c.id, sessions.c.status == "handover"]
    if by is not None:
        cond.append(sessions.c.handover_claimed_by == by)
    elif claimed is not None:
        cond.append(sessions.c.handover_claimed_by.is_not(None) if claimed
                    else sessions.c.handover_claimed_by.is_(None))
    return exists().where(*cond)


def conversations(me: Operator, q: str = "", flt: str = "all", limit: int = PAGE) -> tuple[list[Conversation], bool]:
    """Waiting for a person first (longest wait first), then the rest by their last message."""
    search = [contacts.c.is_test.is_(False)]  # the flow simulator's contacts are not conversations
    q = q.strip()
    if q:
        like = contains_pattern(q)
        search.append(or_(contacts.c.profile_name.ilike(like, escape="\\"), contacts.c.wa_id.like(like, escape="\\")))
    columns = (contacts.c.id, contacts.c.wa_id, contacts.c.profile_name, contacts.c.opted_out, contacts.c.blocked,
               contacts.c.last_seen_at)
    waiting = []
    if flt in ("all", "waiting"):
        waiting = db.session.execute(
            select(*columns).join(sessions, and_(sessions.c.contact_id == contacts.c.id,
                                                 sessions.c.status == "handover",
                                                 sessions.c.handover_claimed_by.is_(None)))
            .where(*search).order_by(sessions.c.started_at).limit(PAGE_MAX)).all()
    rest, more = [], False
    if flt != "waiting":
        stmt = select(*columns).where(*search)
        if flt == "all":
            stmt = stmt.where(~_handover(claimed=False))
        elif flt == "mine":
            stmt = stmt.where(_handover(by=me.name))
        elif flt == "bot":
            stmt = stmt.where(~_handover())
        elif flt == "opted_out":
            stmt = stmt.where(contacts.c.opted_out.is_(True))
        elif flt == "blocked":
            stmt = stmt.where(contacts.c.blocked.is_(True))
        rest = db.session.execute(stmt.order_by(contacts.c.last_seen_at.desc(), contacts.c.id.desc())
                                  .limit(limit + 1)).all()
        more, rest = len(rest) > limit, rest[:limit]
    items = [Conversation(r.id, r.wa_id, r.profile_name or "", r.opted_out, r.blocked, r.last_seen_at)
             for r in [*waiting, *rest]]
    _fill(items, me)
    return items, more


def _fill(items: list[Conversation], me: Operator) -> None:
    """Sessions, last messages, unread counts and waiting times of one page, a query each."""
    if not items:
        return
    ids = [c.id for c in items]
    by_id = {c.id: c for c in items}
    for row in db.session.execute(
            select(sessions.c.contact_id, sessions.c.status, sessions.c.handover_claimed_by, sessions.c.started_at)
            .where(sessions.c.contact_id.in_(ids), sessions.c.status.in_(OPEN_STATUSES))
            .order_by(sessions.c.id)):
        c = by_id[row.contact_id]
        if row.status == "handover":
            c.holder = row.handover_claimed_by
            c.state = "held" if c.holder else "waiting"
            c.waiting_since = row.started_at
        else:
            c.state = "bot"
    newest = select(func.max(messages.c.id)).where(messages.c.contact_id.in_(ids)).group_by(messages.c.contact_id)
    for row in db.session.execute(
            select(messages.c.contact_id, messages.c.text, messages.c.type, messages.c.direction,
                   messages.c.created_at).where(messages.c.id.in_(newest))):
        c = by_id[row.contact_id]
        c.last_text, c.last_direction, c.last_at = row.text or f"[{row.type}]", row.direction, row.created_at
    seen = and_(reads.c.contact_id == messages.c.contact_id, reads.c.operator_id == me.id)
    for contact_id, count in db.session.execute(
            select(messages.c.contact_id, func.count()).select_from(messages.outerjoin(reads, seen))
            .where(messages.c.contact_id.in_(ids), messages.c.direction == "in",
                   messages.c.id > func.coalesce(reads.c.message_id, 0))
            .group_by(messages.c.contact_id)):
        by_id[contact_id].unread = count
    waiting = [c.id for c in items if c.state == "waiting"]
    if waiting:
        for contact_id, at in db.session.execute(
                select(audits.c.contact_id, func.max(audits.c.at))
                .where(audits.c.contact_id.in_(waiting), audits.c.action == "handover")
                .group_by(audits.c.contact_id)):
            c = by_id[contact_id]
            if at is not None and at > c.waiting_since:
                c.waiting_since = at  # the flow handed over after it started


def waiting_ids(limit: int = PAGE_MAX) -> list[int]:
    """Contacts waiting for a person (an unclaimed handover), longest wait first."""
    return list(db.session.execute(
        select(sessions.c.contact_id).join(contacts, contacts.c.id == sessions.c.contact_id)
        .where(sessions.c.status == "handover", sessions.c.handover_claimed_by.is_(None),
               contacts.c.is_test.is_(False))  # a simulator handover waits for nobody
        .order_by(sessions.c.started_at).limit(limit)).scalars())


# -- a thread ----------------------------------------------------------------------------------
@dataclass
class Note:
    key: str
    at: datetime
    text: str
    kind: str = "note"  # note | handover | expiry | operator


SESSION_ENDS = {
    EndReason.IDLE: ("Session expired (idle)", "expiry"), EndReason.RESOLVED: ("Conversation resolved", "operator"),
    EndReason.TAKEN_OVER: ("The bot stopped: an operator took over", "operator"),
    EndReason.RESET: ("Flow session reset", "note"), EndReason.COMPLETED: ("Flow {flow} finished", "note"),
    EndReason.RESTARTED: ("Flow {flow} restarted", "note"), EndReason.REPLACED: ("Flow {flow} replaced", "note"),
    EndReason.INTERRUPTED: ("Flow {flow} left for another flow", "note"),
    EndReason.CANCELLED: ("Flow {flow} cancelled by the user", "note"),
    EndReason.STOPPED: ("The user opted out", "note"),
    EndReason.INVALID: ("Flow {flow} ended: too many answers it could not use", "note"),
    EndReason.FLOW_UNAVAILABLE: ("Flow {flow} ended: the flow is no longer active", "note"),
    EndReason.LOOP: ("Flow {flow} ended: it looped without waiting for the user", "note"),
    EndReason.HANDOVER_IDLE: ("The handover ended: nobody wrote for a long time", "expiry"),
}
ACTIONS = {
    "handover": ("The user asked for a person (flow {target})", "handover"),
    "claim": ("{who} claimed the conversation", "operator"),
    "takeover": ("{who} took the conversation over{from_}", "operator"),
    "resolve": ("{who} resolved the conversation", "operator"),
    "block": ("{who} blocked the contact", "operator"), "unblock": ("{who} unblocked the contact", "operator"),
    "fields": ("{who} changed {fields}", "operator"), "reset": ("{who} reset the flow session", "operator"),
    "start_flow": ("{who} started flow {target}", "operator"),
}


def audit_note(row) -> Note | None:
    if row.action not in ACTIONS:
        return None
    template, kind = ACTIONS[row.action]
    detail = row.detail or {}
    source = detail.get("from") or detail.get("from_flow")
    changed = [*(["name"] if "name" in detail else []), *sorted(detail.get("fields") or {})]
    text = template.format(who=row.operator, target=row.target or "", from_=f" from {source}" if source else "",
                           fields=", ".join(changed) or "fields")
    return Note(f"a{row.id}", row.at, text, kind)


def session_notes(row) -> list[Note]:
    out = []
    if row.flow_name != "(operator)":
        out.append(Note(f"s{row.id}-start", row.started_at, f"Flow {row.flow_name} started"))
    if row.ended_at is not None and row.end_reason:
        template, kind = SESSION_ENDS.get(row.end_reason, ("Flow {flow} ended (" + row.end_reason + ")", "note"))
        out.append(Note(f"s{row.id}-end", row.ended_at, template.format(flow=row.flow_name), kind))
    return out


def notes_since(contact_id: int, since: datetime | None) -> list[Note]:
    """Session starts and ends and audit events of a contact from ``since`` on, oldest first."""
    cond_s = [sessions.c.contact_id == contact_id]
    cond_a = [audits.c.contact_id == contact_id]
    if since is not None:
        cond_s.append(or_(sessions.c.started_at >= since, sessions.c.ended_at >= since))
        cond_a.append(audits.c.at >= since)
    out: list[Note] = []
    for row in db.session.execute(select(sessions.c.id, sessions.c.flow_name, sessions.c.started_at,
                                         sessions.c.ended_at, sessions.c.end_reason).where(*cond_s)):
        out += [n for n in session_notes(row) if since is None or n.at >= since]
    for row in db.session.execute(select(audits).where(*cond_a).order_by(audits.c.id)):
        note = audit_note(row)
        if note is not None:
            out.append(note)
    return sorted(out, key=lambda n: n.at)


def senders(contact_id: int, since: datetime | None) -> dict[int, str]:
    """Who sent each operator message (message id -> operator name), from the audit trail."""
    cond = [audits.c.contact_id == contact_id, audits.c.action == "send"]
    if since is not None:
        cond.append(audits.c.at >= since)
    return {(row.detail or {}).get("message_id"): row.operator
            for row in db.session.execute(select(audits.c.operator, audits.c.detail).where(*cond))}


def thread_messages(contact_id: int, after: int = 0, before: int | None = None, limit: int = THREAD):
    """A contact's messages in order: the newest ``limit`` (before ``before``), or those after ``after``.
    Returns (rows, more_before)."""
    stmt = select(messages).where(messages.c.contact_id == contact_id)
    if after:
        rows = db.session.execute(stmt.where(messages.c.id > after).order_by(messages.c.id).limit(limit)).all()
        return rows, False
    if before:
        stmt = stmt.where(messages.c.id < before)
    rows = db.session.execute(stmt.order_by(messages.c.id.desc()).limit(limit + 1)).all()
    return rows[:limit][::-1], len(rows) > limit


def merge(rows, notes: list[Note]) -> list[tuple[str, object]]:
    """Messages in id order with the notes placed by time."""
    out, pending = [], list(notes)
    for row in rows:
        while pending and pending[0].at <= row.created_at:
            out.append(("note", pending.pop(0)))
        out.append(("message", row))
    out += [("note", n) for n in pending]
    return out


def outbound_statuses(contact_id: int, limit: int = 100):
    """The newest outbound rows' delivery state (the page updates their ticks)."""
    return db.session.execute(
        select(messages.c.id, messages.c.status, messages.c.error_code, messages.c.error_title,
               messages.c.error_details, messages.c.sent_at, messages.c.delivered_at, messages.c.read_at,
               messages.c.failed_at)
        .where(messages.c.contact_id == contact_id, messages.c.direction == "out")
        .order_by(messages.c.id.desc()).limit(limit)).all()


def mark_read(me: Operator, contact_id: int, message_id: int) -> None:
    """Remember the newest message ``me`` has seen in this conversation (never moves back)."""
    if not message_id:
        return
    stmt = dialect_insert(OperatorRead.__table__).values(operator_id=me.id, contact_id=contact_id,
                                                         message_id=message_id, read_at=utcnow())
    stmt = stmt.on_conflict_do_update(
        index_elements=[reads.c.operator_id, reads.c.contact_id],
        set_={"message_id": func.max(reads.c.message_id, stmt.excluded.message_id) if db.engine.dialect.name ==
              "sqlite" else func.greatest(reads.c.message_id, stmt.excluded.message_id),
              "read_at": stmt.excluded.read_at})
    db.session.execute(stmt)
    db.session.commit()


def audit_page(operator: str | None = None, action: str | None = None, contact_id: int | None = None,
               before: int | None = None, limit: int = 100):
    stmt = select(audits)
    if operator:
        stmt = stmt.where(audits.c.operator == operator)
    if action:
        stmt = stmt.where(audits.c.action == action)
    if contact_id:
        stmt = stmt.where(audits.c.contact_id == contact_id)
    if before:
        stmt = stmt.where(audits.c.id < before)
    rows = db.session.execute(stmt.order_by(audits.c.id.desc()).limit(limit + 1)).all()
    return rows[:limit], len(rows) > limit
